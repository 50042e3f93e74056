"""One background thread that keeps every held message invisible to other workers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from worker.fleet.sqs_queue import MAX_VISIBILITY_SECONDS, SqsQueue

log = logging.getLogger(__name__)

# Keep this far from SQS's 12-hour cap: a request past it fails for the whole batch.
_CAP_MARGIN_SECONDS = 60


class Heartbeat:
    """Extends the visibility of held messages every ``interval`` seconds.

    A message stops being extended as soon as ``forget`` is called (deleted or
    released). Extensions never ask for more than SQS's 12 h cap from first receipt.
    """

    def __init__(self, queue: SqsQueue, visibility_timeout: int, interval: float,
                 clock: Callable[[], float] = time.monotonic,
                 on_alive: Callable[[], None] = lambda: None,
                 wake_every: float = 5.0) -> None:
        """``on_alive`` runs at least every ``wake_every`` seconds (the loop's liveness
        beat), even when the extension interval is long."""
        self._queue = queue
        self._visibility_timeout = visibility_timeout
        self._interval = interval
        self._clock = clock
        self._held: dict[str, float] = {}  # receipt -> first received (monotonic)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._on_alive = on_alive
        self._wake_every = wake_every
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self.extensions = 0

    def start(self) -> None:
        self._thread.start()

    def hold(self, receipt: str, received_at: float) -> None:
        with self._lock:
            self._held[receipt] = received_at

    def forget(self, receipts: list[str]) -> None:
        with self._lock:
            for receipt in receipts:
                self._held.pop(receipt, None)

    def held(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        next_beat = time.monotonic() + self._interval
        while not self._stop.wait(min(self._wake_every,
                                      max(0.0, next_beat - time.monotonic()))):
            self._on_alive()
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + self._interval
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - keep beating; the next round may work
                log.exception("heartbeat failed")

    def beat(self) -> None:
        now = self._clock()
        entries: list[tuple[str, int]] = []
        expired: list[str] = []
        with self._lock:
            for receipt, received_at in self._held.items():
                left = MAX_VISIBILITY_SECONDS - _CAP_MARGIN_SECONDS - (now - received_at)
                timeout = int(min(self._visibility_timeout, left))
                if timeout <= 0:
                    expired.append(receipt)
                else:
                    entries.append((receipt, timeout))
            for receipt in expired:
                del self._held[receipt]
        for receipt in expired:
            log.warning("message held for 12 h, SQS will redeliver it: %s", receipt[:16])
        if entries:
            failed = self._queue.change_visibility(entries)
            self.extensions += len(entries) - len(failed)
