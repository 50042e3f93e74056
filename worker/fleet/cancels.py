"""Whether a job was cancelled: its batch's ``cancel.json`` (written by
``img2img-producer cancel``), read at most every ``max_age`` seconds per batch.

``lookup`` may read S3 (I/O threads); ``known`` only answers from what was read, so the
engine thread can ask it right before a batch runs without waiting on S3. One thread
reads a stale order at a time; the others answer from the last read meanwhile (a batch
of jobs prepared together makes one read, not one each).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from contract.batches import CancelOrder
from contract.locations import S3Location, batch_cancel_key, output_dir
from worker.fleet.storage import S3Storage

MAX_BATCHES = 1024  # batches remembered (oldest forgotten first)


class CancelWatch:
    def __init__(self, storage: S3Storage, max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self.max_age = max_age
        self._clock = clock
        self._orders: dict[S3Location, tuple[float, CancelOrder | None]] = {}
        self._used: dict[S3Location, float] = {}  # when a job of the batch last asked
        self._reading: set[S3Location] = set()  # orders being read again now
        self._lock = threading.Lock()

    @staticmethod
    def location(output: S3Location, batch_id: str) -> S3Location:
        return S3Location(bucket=output.bucket,
                          key=batch_cancel_key(output_dir(output.key), batch_id))

    def lookup(self, output: S3Location, batch_id: str | None, job_id: str) -> str | None:
        """Why the job is cancelled (None: it is not), reading S3 when the last look at
        its batch is older than ``max_age``."""
        if not batch_id:
            return None
        where = self.location(output, batch_id)
        with self._lock:
            seen = self._orders.get(where)
            self._used[where] = self._clock()
            read = seen is None or (self._clock() - seen[0] >= self.max_age
                                    and where not in self._reading)
            if read:
                self._reading.add(where)
        if read:
            try:
                self.refresh(where)
            finally:
                with self._lock:
                    self._reading.discard(where)
        return self.known(output, batch_id, job_id)

    def known(self, output: S3Location, batch_id: str | None, job_id: str) -> str | None:
        if not batch_id:
            return None
        with self._lock:
            seen = self._orders.get(self.location(output, batch_id))
        order = seen[1] if seen else None
        return order.reason if order is not None and order.covers(job_id) else None

    def refresh(self, where: S3Location) -> None:
        data, _ = self.storage.read_json(where)
        try:
            order = CancelOrder.model_validate(data) if data else None
        except ValueError:
            order = None
        with self._lock:
            if len(self._orders) >= MAX_BATCHES and where not in self._orders:
                oldest = next(iter(self._orders))
                self._orders.pop(oldest)
                self._used.pop(oldest, None)
            self._orders[where] = (self._clock(), order)

    def refresh_stale(self, active_within: float = 600.0) -> None:
        """Read again the batches whose look is older than ``max_age``, among those a job
        asked about in the last ``active_within`` seconds."""
        now = self._clock()
        with self._lock:
            stale = [w for w, (at, _) in self._orders.items() if now - at >= self.max_age
                     and now - self._used.get(w, 0.0) < active_within]
        for where in stale:
            self.refresh(where)
