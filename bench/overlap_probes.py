"""The overlap benchmark's instruments: a fixed-latency engine in place of the GPU, S3
and SQS wrappers that time every request by kind, moto in its own process, CPU meters."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


class FixedLatencyEngine:
    """Stands in for worker.engine.engine.Engine: one batch takes ``latency`` s, any size."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls: list[tuple[float, float, int]] = []

    def check_model(self, reference: str) -> None:
        return None

    def check_loras(self, refs: list[str]) -> None:
        return None

    def apply_profile(self, params):
        """Every model is SD 1.x here: the job's unset parameters take its defaults."""
        from contract.model_profiles import PROFILES, resolve_params

        return resolve_params(params, PROFILES["sd1"]), PROFILES["sd1"]

    def generate(self, key, items, on_step=None):
        from worker.engine.engine import BatchStats, GenerationResult

        started = time.perf_counter()
        time.sleep(self.latency)
        self.calls.append((started, time.perf_counter(), len(items)))
        return GenerationResult(images=[item.image for item in items],
                                stats=BatchStats(pipeline_calls=1))

    def close(self) -> None:
        return None


def timed_queue_class():
    from worker.fleet.sqs_queue import SqsQueue

    class TimedQueue(SqsQueue):
        """Records (start, end, messages) of every receive and delete call."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.receives: list[tuple[float, float, int]] = []
            self.deletes: list[tuple[float, float, int]] = []
            self.cpu_seconds = {"receive": 0.0, "delete": 0.0}
            self._lock = threading.Lock()

        def receive(self, *args: Any, **kwargs: Any):
            started, cpu = time.perf_counter(), time.thread_time()
            messages = super().receive(*args, **kwargs)
            with self._lock:
                self.receives.append((started, time.perf_counter(), len(messages)))
                self.cpu_seconds["receive"] += time.thread_time() - cpu
            return messages

        def delete(self, receipts: list[str]) -> list[str]:
            started, cpu = time.perf_counter(), time.thread_time()
            failed = super().delete(receipts)
            with self._lock:
                self.deletes.append((started, time.perf_counter(), len(receipts)))
                self.cpu_seconds["delete"] += time.thread_time() - cpu
            return failed

    return TimedQueue


def request_kind(operation: str, params: dict[str, Any]) -> str:
    """What one S3 request of a job is for, from its operation and key alone (so the
    count holds for any version of the worker)."""
    key = str(params.get("Key") or params.get("Prefix") or "")
    if operation.startswith("ListObjects"):
        return "LIST batch"
    if "/_batches/" in f"/{key}":
        name = key.rsplit("/", 1)[-1]
        if "/counts/" in key:
            what = "counter"
        elif name in ("manifest.json", "cancel.json", "complete.json"):
            what = name.removesuffix(".json")
        else:
            what = "marker"
        return f"{_VERB.get(operation, operation)} {what}"
    if key.endswith(".json"):
        if operation == "PutObject":
            if params.get("IfNoneMatch"):
                return "PUT claim"
            return "PUT claim takeover" if params.get("IfMatch") else "PUT record"
        return f"{_VERB.get(operation, operation)} record"
    if operation == "GetObject":
        return "GET input"
    return f"{_VERB.get(operation, operation)} output"


class _Operation:
    def __init__(self, name: str) -> None:
        self.name = name


_VERB = {"GetObject": "GET", "PutObject": "PUT", "HeadObject": "HEAD",
         "DeleteObject": "DELETE"}


class RequestMeter:
    """Counts every S3 request a boto3 client or a direct object client makes, by kind
    (``request_kind``), and the calling thread's CPU seconds inside the client for each
    (both run a call on the caller's thread, from building the request to the parsed
    response)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._local = threading.local()

    def install(self, s3: Any) -> None:
        events = s3.meta.events
        events.register("before-parameter-build.s3", self._started)
        events.register("after-call.s3", self._ended)
        events.register("after-call-error.s3", self._ended)

    def install_direct(self, objects: Any) -> None:
        """Meter a ``worker.fleet.object_clients.DirectObjects`` (every request goes
        through its ``_send``)."""
        send = objects._send

        def metered(operation: str, method: str, bucket: str, key: str,
                    headers: dict[str, str], body: bytes = b"") -> Any:
            params = {"Key": key, "IfNoneMatch": headers.get("if-none-match"),
                      "IfMatch": headers.get("if-match")}
            self._started(params, _Operation(operation))
            try:
                return send(operation, method, bucket, key, headers, body)
            finally:
                self._ended()

        objects._send = metered

    def _started(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self._local.current = (request_kind(model.name, params), time.thread_time())

    def _ended(self, **_: Any) -> None:
        current = getattr(self._local, "current", None)
        if current is None:
            return
        self._local.current = None
        kind, cpu = current
        with self._lock:
            self.counts[kind] += 1
            self.cpu_seconds[kind] += time.thread_time() - cpu


MOTO_SERVERS = ("keepalive", "werkzeug")


@contextlib.contextmanager
def moto_subprocess(server: str = "keepalive"):
    """moto in its own process, so the server does not share the worker's GIL (a real S3
    and SQS are other machines). ``keepalive``: served by bench.moto_keepalive (HTTP/1.1
    keep-alive, as S3 and SQS); ``werkzeug``: moto's own server (a new connection per
    request). Yields (endpoint, pid)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = ([sys.executable, "-m", "bench.moto_keepalive", str(port)]
               if server == "keepalive" else
               [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parent.parent)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"moto server ({' '.join(command[1:3])}) exited with "
                                   f"code {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                        timeout=0.5):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("moto server did not start")
        yield endpoint, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of another process, from /proc (0 where unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ImageCpuMeter:
    """Counts the thread CPU seconds of the worker's image work (decode, resize, encode)
    by wrapping the functions ``worker.fleet.fleet_jobs`` calls, for the length of the run."""

    NAMES = {"decode_and_prepare": "decode", "encode_image": "encode",
             "restore_size": "encode"}

    def __init__(self) -> None:
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def _wrap(self, fn, stage: str):
        def timed(*args: Any, **kwargs: Any):
            cpu = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.cpu_seconds[stage] += time.thread_time() - cpu
        return timed

    @contextlib.contextmanager
    def installed(self):
        from worker.fleet import fleet_jobs

        originals = {name: getattr(fleet_jobs, name) for name in self.NAMES}
        try:
            for name, stage in self.NAMES.items():
                setattr(fleet_jobs, name, self._wrap(originals[name], stage))
            yield self
        finally:
            for name, fn in originals.items():
                setattr(fleet_jobs, name, fn)
