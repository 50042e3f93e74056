"""Liveness: the loop touches a file when it makes progress; the check reads its age."""

from __future__ import annotations

import os
import time
from pathlib import Path


class HealthFile:
    def __init__(self, path: Path, min_interval: float = 1.0) -> None:
        self.path = path
        self.min_interval = min_interval
        self._last = 0.0

    def touch(self) -> None:
        now = time.time()
        if now - self._last < self.min_interval:
            return
        self._last = now
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(f"{now:.3f}\n")
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only disk must not stop the work; the check will say unhealthy


def check_health(path: Path, max_age: float) -> tuple[bool, str]:
    try:
        stamp = float(path.read_text().strip())
    except (OSError, ValueError):
        return False, f"no progress recorded yet ({path})"
    age = time.time() - stamp
    if age > max_age:
        return False, f"no progress for {age:.0f} s (limit {max_age:.0f} s)"
    return True, f"progress {age:.0f} s ago"
