"""Helpers for fleet tests: jobs on the queue, worker subprocesses, a fault proxy."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from contract import GenerationParams, JobMessage, S3Location, parse_s3_uri, validate_params
from local_fleet.embedded_aws import FleetResources

WORKER_BIN = str(Path(sys.executable).with_name("img2img-worker"))
FAST = dict(model="tiny", prompt="a test", steps=4, strength=0.5, max_side=128)


def put_job(s3: Any, sqs: Any, fleet: FleetResources, key: str, data: bytes | None = None,
            *, output_prefix: str = "out/", batch_id: str = "b1",
            send: bool = True, **params: Any) -> JobMessage:
    """Upload ``data`` to ``key`` (unless None) and enqueue a job for it."""
    if data is not None:
        s3.put_object(Bucket=fleet.bucket, Key=key, Body=data)
    try:
        etag = s3.head_object(Bucket=fleet.bucket, Key=key)["ETag"]
    except Exception:  # noqa: BLE001 - a job for a missing object is a valid test case
        etag = None
    merged: dict[str, Any] = {**FAST, **params}
    job = JobMessage.create(
        input=S3Location(bucket=fleet.bucket, key=key), input_etag=etag,
        output_prefix=parse_s3_uri(f"s3://{fleet.bucket}/{output_prefix}", prefix=True),
        params=GenerationParams(**merged) if "model" in params else validate_params(**merged),
        batch_id=batch_id)
    if send:
        sqs.send_message(QueueUrl=fleet.queue_url, MessageBody=job.to_json())
    return job


def upload_tiny_model(s3: Any, bucket: str, model_cache: Path,
                      prefix: str = "models/tiny/") -> str:
    """Copy the tiny model into S3 under ``prefix``; return its s3:// URI."""
    from worker.engine.tiny_model import ensure_tiny_model

    tiny = ensure_tiny_model(model_cache)
    for path in tiny.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}{path.relative_to(tiny).as_posix()}")
    return f"s3://{bucket}/{prefix}"


def worker_env(fleet: FleetResources, model_cache: Path, tmp_path: Path,
               **settings: Any) -> dict[str, str]:
    env = dict(os.environ, **fleet.environment())
    env.update({
        "IMG2IMG_MODEL_CACHE": str(model_cache),
        "IMG2IMG_RECEIVE_WAIT_SECONDS": "1",
        "IMG2IMG_HEALTH_FILE": str(tmp_path / "worker.health"),
        "IMG2IMG_VISIBILITY_TIMEOUT": "30",
        "IMG2IMG_RELEASE_BACKOFF_SECONDS": "0",
        "OMP_NUM_THREADS": "2",
    })
    env.update({f"IMG2IMG_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class WorkerProcess:
    """``img2img-worker serve`` as a real subprocess with its JSON logs captured."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([WORKER_BIN, "serve", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []  # stderr: the JSON log lines
        self.stdout_lines: list[str] = []  # stdout: CloudWatch EMF metric lines
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr, self.lines),
                                        daemon=True)
        self._reader.start()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout_lines),
                         daemon=True).start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def metrics(self) -> list[dict]:
        """The EMF documents the worker printed."""
        return [json.loads(line) for line in list(self.stdout_lines) if '"_aws"' in line]

    def logs(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.logs():
                if predicate(entry):
                    return entry
            if self.proc.poll() is not None and not any(predicate(e) for e in self.logs()):
                break
            time.sleep(0.05)
        raise AssertionError("log line not seen; logs:\n" + "\n".join(self.lines[-40:]))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def summary(self) -> str:
        return next((line for line in reversed(self.lines) if line.startswith("worker ")), "")


def queue_counts(sqs: Any, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))


def record_of(s3: Any, job: JobMessage) -> dict | None:
    try:
        body = s3.get_object(Bucket=job.output.bucket, Key=job.output.key + ".json")["Body"]
    except s3.exceptions.NoSuchKey:
        return None
    return json.loads(body.read())


class FaultProxy:
    """A reverse proxy in front of moto that slows some requests or fails them.

    ``fault(method, path, count)`` returns (status, code) to fail a request, or None to
    forward it; ``count`` is how many requests with that method and path came before.
    ``delay(method, path)`` is how many seconds to hold a request first.
    """

    def __init__(self, upstream: str,
                 fault: Callable[[str, str, int], tuple[int, str] | None] = lambda *a: None,
                 delay: Callable[[str, str], float] = lambda method, path: 0.0,
                 cut: Callable[[str, str, int], bool] = lambda *a: False,
                 sqs_fault: Callable[[str, int], tuple[int, str] | None] = lambda *a: None,
                 ) -> None:
        self.upstream = upstream.rstrip("/")
        self.fault = fault
        self.delay = delay
        self.cut = cut  # send half the body, then close: a body cut mid-stream
        self.sqs_fault = sqs_fault  # by SQS action (X-Amz-Target), e.g. "DeleteMessageBatch"
        self.seen: dict[tuple[str, str], int] = {}
        self.injected: list[tuple[str, str, int]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path_only = self.path.split("?", 1)[0]
                with threading.Lock():
                    count = proxy.seen.get((self.command, path_only), 0)
                    proxy.seen[(self.command, path_only)] = count + 1
                time.sleep(proxy.delay(self.command, path_only))
                action = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                injected = proxy.fault(self.command, path_only, count)
                if action:
                    with threading.Lock():
                        sqs_count = proxy.seen.get(("SQS", action), 0)
                        proxy.seen[("SQS", action)] = sqs_count + 1
                    injected = proxy.sqs_fault(action, sqs_count) or injected
                if injected is not None:
                    status, code = injected
                    proxy.injected.append((self.command, path_only, status))
                    payload = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}"
                               f"</Code><Message>injected</Message></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                if body is None and self.command in ("PUT", "POST"):
                    body = b""
                request = urllib.request.Request(proxy.upstream + self.path, data=body,
                                                 method=self.command, headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, data, out_headers = (response.status, response.read(),
                                                     response.headers)
                except urllib.error.HTTPError as exc:
                    status, data, out_headers = exc.code, exc.read(), exc.headers
                self.send_response(status)
                for key, value in out_headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding",
                                           "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if len(data) > 1 and proxy.cut(self.command, path_only, count):
                    proxy.injected.append((self.command, path_only, -1))
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
