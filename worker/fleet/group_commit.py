"""Group commit: work items that arrive close together are handled in one call.

The I/O threads that end jobs hand them over here; the first one in becomes the
committer, waits a moment for the others (the rest of its pipeline batch, written at the
same time), and commits what has gathered, again and again until nothing is left. The
others return at once. So a batch of jobs costs one commit, not one per job, and no
thread of its own is needed: the pipeline's drain waits for the committer like for any
I/O work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, commit: Callable[[list[T]], None], *, linger: float = 0.01,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._commit = commit  # must not raise: each item's fate is its own business
        self._linger = linger
        self._sleep = sleep
        self._pending: list[T] = []
        self._committing = False
        self._lock = threading.Lock()

    def add(self, item: T) -> None:
        """Hand ``item`` over; the calling thread commits, or returns if another does."""
        with self._lock:
            self._pending.append(item)
            if self._committing:
                return
            self._committing = True
        while True:
            if self._linger:
                self._sleep(self._linger)
            with self._lock:
                items, self._pending = self._pending, []
                if not items:
                    self._committing = False
                    return
            self._commit(items)
