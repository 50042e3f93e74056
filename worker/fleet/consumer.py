"""The queue consumer: receives from one or more SQS queues in a stated poll order and
settles every message it received exactly once.

Settling a message is one of:
- ``ack``: delete it (buffered, deleted in batches of 10 by a background thread that
  backs off while SQS fails and says so once);
- ``retry(delay)``: make it visible again after ``delay`` seconds (0: at once), so
  another receive takes it and SQS redrive counts the attempt;
- ``release_unstarted`` / ``release_all`` / ``close``: what is still held goes back
  at once (visibility 0), in batches of 10.
Until then a heartbeat keeps each held message invisible to other workers.

Poll order: the queues are asked in the order given (a high-priority queue first); each
round short-polls all but the last, which gets the long poll. Every ``fair_share``-th
round starts one queue further down, so under a steady load on the first queue the
others still get the first pick in one round of ``fair_share``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from worker.fleet.heartbeat import Heartbeat
from worker.fleet.sqs_queue import MAX_RECEIVE_MESSAGES, ReceivedMessage, SqsQueue

log = logging.getLogger(__name__)

# Deletes wait this long for company before a DeleteMessageBatch goes out.
DELETE_GATHER_SECONDS = 0.05
# While DeleteMessageBatch fails, the pause between tries doubles up to this.
DELETE_BACKOFF_MAX_SECONDS = 5.0
# close(): tries to delete what is due before giving up on it.
FINAL_DELETE_ATTEMPTS = 4
DEFAULT_FAIR_SHARE = 4


class DeliveryState(str, Enum):
    HELD = "held"  # received, not yet in the engine: released on the first signal
    STARTED = "started"  # a job of it reached the engine: kept until the batch ends
    SETTLED = "settled"  # acked or released: its receipt is never used again


@dataclass(eq=False)
class Delivery:
    """One received message, from one queue, until it is settled."""

    message: ReceivedMessage
    queue: SqsQueue
    state: DeliveryState = DeliveryState.HELD

    @property
    def receipt(self) -> str:
        return self.message.receipt_handle

    @property
    def message_id(self) -> str:
        return self.message.message_id


class QueueConsumer:
    def __init__(self, queues: list[SqsQueue], *, visibility_timeout: int,
                 wait_seconds: int, heartbeat_interval: float,
                 fair_share: int = DEFAULT_FAIR_SHARE,
                 on_alive: Callable[[str], None] = lambda loop: None,
                 beat_every: float = 5.0) -> None:
        if not queues:
            raise ValueError("a consumer needs at least one queue")
        if fair_share < 1:
            raise ValueError(f"fair_share must be at least 1, got {fair_share}")
        self.queues = queues
        self.visibility_timeout = visibility_timeout
        self.wait_seconds = wait_seconds
        self.fair_share = fair_share
        self._on_alive = on_alive
        self._beat_every = beat_every
        self._heartbeats = {q.queue_url: Heartbeat(
            q, visibility_timeout, heartbeat_interval,
            on_alive=lambda: on_alive("heartbeat"), wake_every=beat_every) for q in queues}
        self._cond = threading.Condition()
        self._held: dict[str, Delivery] = {}  # receipt -> delivery
        self._to_delete: list[Delivery] = []
        self._closing = False
        self._rounds = 0
        self._deleter = threading.Thread(target=self._delete_loop, name="deleter", daemon=True)
        self.delete_error: str | None = None  # why the last deletes failed, None when fine

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        for heartbeat in self._heartbeats.values():
            heartbeat.start()
        self._deleter.start()

    def close(self) -> str | None:
        """Delete what is due (a few tries), release what is held, stop the threads.
        Returns why finished messages could not be deleted, or None."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._deleter.join(timeout=DELETE_BACKOFF_MAX_SECONDS * 2)
        error = None
        for attempt in range(FINAL_DELETE_ATTEMPTS):
            error = self._flush_deletes()
            if error is None:
                break
            time.sleep(min(DELETE_BACKOFF_MAX_SECONDS, 0.5 * 2 ** attempt))
        self.release_all()
        for heartbeat in self._heartbeats.values():
            heartbeat.stop()
        if error is not None:
            with self._cond:
                left = len(self._to_delete)
            return (f"could not delete {left} finished messages ({error}); they will be "
                    "delivered again and acknowledged as already done")
        return None

    # -- receiving ----------------------------------------------------------------------

    def poll_order(self) -> list[SqsQueue]:
        """This round's order: the stated one, rotated every ``fair_share``-th round."""
        self._rounds += 1
        count = len(self.queues)
        if count == 1 or self._rounds % self.fair_share:
            return list(self.queues)
        shift = (self._rounds // self.fair_share - 1) % (count - 1) + 1
        return self.queues[shift:] + self.queues[:shift]

    def receive(self, max_messages: int, wait_seconds: int | None = None) -> list[Delivery]:
        """Up to ``max_messages`` (at most 10) from the first queue in this round's order
        that has any; only the last queue asked long-polls (``wait_seconds``, default
        the consumer's)."""
        order = self.poll_order()
        count = max(1, min(max_messages, MAX_RECEIVE_MESSAGES))
        for index, queue in enumerate(order):
            wait = ((self.wait_seconds if wait_seconds is None else wait_seconds)
                    if index == len(order) - 1 else 0)
            messages = queue.receive(count, wait, self.visibility_timeout, time.monotonic())
            if messages:
                return [self._hold(Delivery(message, queue)) for message in messages]
        return []

    def _hold(self, delivery: Delivery) -> Delivery:
        with self._cond:
            self._held[delivery.receipt] = delivery
        self._heartbeats[delivery.queue.queue_url].hold(delivery.receipt,
                                                        delivery.message.received_at)
        return delivery

    @property
    def held_count(self) -> int:
        with self._cond:
            return len(self._held)

    @property
    def deletes_pending(self) -> int:
        with self._cond:
            return len(self._to_delete)

    def mark_started(self, delivery: Delivery) -> None:
        with self._cond:
            if delivery.state is DeliveryState.HELD:
                delivery.state = DeliveryState.STARTED

    # -- settling -----------------------------------------------------------------------

    def _settle(self, delivery: Delivery) -> bool:
        """Take ``delivery`` out of the held set; False when it was settled already."""
        with self._cond:
            if delivery.state is DeliveryState.SETTLED:
                return False
            delivery.state = DeliveryState.SETTLED
            self._held.pop(delivery.receipt, None)
        self._heartbeats[delivery.queue.queue_url].forget([delivery.receipt])
        return True

    def ack(self, delivery: Delivery) -> None:
        """Done with it: delete (batched)."""
        if self._settle(delivery):
            with self._cond:
                self._to_delete.append(delivery)
                self._cond.notify_all()

    def retry(self, delivery: Delivery, delay: int) -> bool:
        """Visible again after ``delay`` seconds. False when it was settled already."""
        if not self._settle(delivery):
            return False
        self._change_visibility([delivery], delay)
        return True

    def release_unstarted(self) -> list[Delivery]:
        """Every held message no job of which reached the engine goes back at once."""
        with self._cond:
            chosen = [d for d in self._held.values() if d.state is DeliveryState.HELD]
        return self._release(chosen)

    def release_all(self) -> list[Delivery]:
        with self._cond:
            chosen = list(self._held.values())
        return self._release(chosen)

    def _release(self, deliveries: list[Delivery]) -> list[Delivery]:
        released = [d for d in deliveries if self._settle(d)]
        self._change_visibility(released, 0)
        return released

    def _change_visibility(self, deliveries: list[Delivery], delay: int) -> None:
        for queue in self.queues:
            receipts = [d.receipt for d in deliveries if d.queue is queue]
            if not receipts:
                continue
            try:
                queue.release(receipts, delay)
            except Exception as exc:  # noqa: BLE001 - they reappear after the timeout anyway
                log.warning("could not release %d messages: %r", len(receipts), exc)

    # -- deleting -----------------------------------------------------------------------

    def _delete_loop(self) -> None:
        """Wait for deletes, gather a moment, send; on failure back off and say so once."""
        pause = DELETE_GATHER_SECONDS
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._to_delete or self._closing,
                                    timeout=self._beat_every)
                if self._closing:
                    return
            self._on_alive("deleter")
            if not self._to_delete:
                continue
            time.sleep(pause)
            error = self._flush_deletes()
            if error is None:
                if self.delete_error is not None:
                    log.info("deleting messages works again")
                self.delete_error, pause = None, DELETE_GATHER_SECONDS
                continue
            if self.delete_error is None:
                log.warning("delete failed: %s; retrying with backoff", error)
            self.delete_error = error
            pause = min(pause * 2, DELETE_BACKOFF_MAX_SECONDS)

    def _flush_deletes(self) -> str | None:
        """Delete what is due; return why some could not be deleted (None: all went)."""
        with self._cond:
            due, self._to_delete = self._to_delete, []
        error = None
        failed: list[Delivery] = []
        for queue in self.queues:
            chosen = [d for d in due if d.queue is queue]
            if not chosen:
                continue
            try:
                refused = set(queue.delete([d.receipt for d in chosen]))
                failed += [d for d in chosen if d.receipt in refused]
                error = error or (f"{len(refused)} entries refused" if refused else None)
            except Exception as exc:  # noqa: BLE001 - retried on the next flush
                failed += chosen
                error = repr(exc)
        if failed:
            with self._cond:
                self._to_delete.extend(failed)
        return error
