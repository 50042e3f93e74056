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


def timed_storage_class():
    from worker.fleet.storage import S3Storage

    class TimedStorage(S3Storage):
        """Records the seconds (wall, and this thread's CPU) of every S3 request by kind."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.seconds: dict[str, list[float]] = defaultdict(list)
            self.cpu_seconds: dict[str, float] = defaultdict(float)
            self._lock = threading.Lock()

        def _timed(self, name: str, fn, *args: Any, **kwargs: Any):
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name].append(time.perf_counter() - started)
                    self.cpu_seconds[name] += time.thread_time() - cpu

        def read_object(self, location):
            return self._timed("get_input", super().read_object, location)

        def read_json(self, location):
            return self._timed("get_result_record", super().read_json, location)

        def put_if_absent(self, location, data, content_type, metadata=None):
            kind = "put_claim" if location.key.endswith(".json") else "put_output_if_absent"
            return self._timed(kind, super().put_if_absent, location, data, content_type,
                               metadata)

        def put_if_match(self, location, data, content_type, etag):
            return self._timed("put_claim_takeover", super().put_if_match, location, data,
                               content_type, etag)

        def head_metadata(self, location):
            return self._timed("head_output", super().head_metadata, location)

        def delete(self, location):
            return self._timed("delete_claim", super().delete, location)

        def put(self, location, data, content_type):
            kind = "put_result_record" if location.key.endswith(".json") else "put_marker"
            return self._timed(kind, super().put, location, data, content_type)

    return TimedStorage


@contextlib.contextmanager
def moto_subprocess():
    """moto in its own process, so the server does not share the worker's GIL (a real S3
    and SQS are other machines). Yields (endpoint, pid)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
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
