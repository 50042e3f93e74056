"""Liveness: every loop of the worker beats; the check fails when one died or stalled.

The worker writes one small JSON file: when it last wrote it, when each of its loops
(receiver, engine, deleter, heartbeat, ...) last made progress, which loop died and
why, its process and host, and whether it stopped. ``img2img-worker healthcheck`` reads
it, so a worker whose receiver thread is gone is reported unhealthy even while its
other threads still run, and a worker that exited (or was killed) is unhealthy at once,
not only once its last beat grows old.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

# Loops beat at least every quarter of the health check's limit, and at least this often.
MAX_BEAT_INTERVAL_SECONDS = 5.0


def beat_interval(max_age: float) -> float:
    """How often a waiting loop must wake to beat, for a check with limit ``max_age``."""
    return max(0.05, min(MAX_BEAT_INTERVAL_SECONDS, max_age / 4))


class HealthFile:
    """Per-loop beats, written to ``path`` at most once per ``min_interval`` seconds."""

    def __init__(self, path: Path, min_interval: float = 1.0) -> None:
        self.path = path
        self.min_interval = min_interval
        self._beats: dict[str, float] = {}
        self._dead: dict[str, str] = {}
        self._stopped: str | None = None
        self._last_write = 0.0
        self._lock = threading.Lock()

    def beat(self, loop: str = "main") -> None:
        now = time.time()
        with self._lock:
            self._beats[loop] = now
            if now - self._last_write < self.min_interval:
                return
            self._last_write = now
        self._write()

    def touch(self) -> None:
        self.beat("main")

    def forget(self, loop: str) -> None:
        """A loop that ended on purpose (shutdown) stops being checked."""
        with self._lock:
            self._beats.pop(loop, None)

    def died(self, loop: str, reason: str) -> None:
        """A loop ended unexpectedly: unhealthy from now on, written at once."""
        with self._lock:
            self._dead[loop] = reason
        self._write()

    def stopped(self, reason: str) -> None:
        """The worker is exiting: unhealthy from now on, written at once."""
        with self._lock:
            self._stopped = reason
        self._write()

    def _write(self) -> None:
        with self._lock:
            state = {"time": time.time(), "loops": dict(self._beats),
                     "dead": dict(self._dead), "pid": os.getpid(),
                     "host": socket.gethostname(), "stopped": self._stopped}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(state) + "\n")
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only disk must not stop the work; the check will say unhealthy


def check_health(path: Path, max_age: float) -> tuple[bool, str]:
    try:
        state = json.loads(path.read_text())
        written = float(state["time"])
        loops = {str(k): float(v) for k, v in dict(state.get("loops", {})).items()}
        dead = {str(k): str(v) for k, v in dict(state.get("dead", {})).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False, f"no progress recorded yet ({path})"
    now = time.time()
    if state.get("stopped"):
        return False, f"the worker stopped: {state['stopped']}"
    if not _running(state.get("pid"), state.get("host")):
        return False, f"the worker (process {state.get('pid')}) is not running"
    if dead:
        loop, reason = next(iter(dead.items()))
        return False, f"the {loop} loop died: {reason}"
    if now - written > max_age:
        return False, f"no progress for {now - written:.0f} s (limit {max_age:.0f} s)"
    stalled = {loop: now - at for loop, at in loops.items() if now - at > max_age}
    if stalled:
        loop, age = max(stalled.items(), key=lambda item: item[1])
        return False, f"the {loop} loop made no progress for {age:.0f} s (limit {max_age:.0f} s)"
    return True, f"progress {now - written:.0f} s ago ({', '.join(sorted(loops)) or 'starting'})"


def _running(pid: object, host: object) -> bool:
    """Whether the process that wrote the file still runs; True when that cannot be
    told here (no pid recorded, or another host wrote it)."""
    if not isinstance(pid, int) or host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True
