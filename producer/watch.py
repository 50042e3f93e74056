"""``status --watch``: poll until a batch finishes (or the queue drains), and stop with a
reason instead of waiting forever when the batch's remaining jobs sit in the DLQ.

A job whose message went to the DLQ never gets a marker, so its batch never completes.
When the batch is unfinished, nothing is visible, in flight or delayed on the queue and
the DLQ holds messages, no worker can finish it: after ``dlq_grace`` seconds of that
(SQS's counts are approximate and can lag), the watch stops with ``stalled``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from common.cli import bars_shown
from contract.locations import S3Location
from producer.queues import QueueDepth, queue_depth
from producer.status import BatchProgress, batch_progress

Clock = Callable[[], float]
Sleep = Callable[[float], None]
# A display: called after each poll with what it saw.
BatchDisplay = Callable[[BatchProgress], None]
QueueDisplay = Callable[["QueueWatch"], None]


def outstanding(depth: QueueDepth) -> int:
    """Messages that may still be processed: visible, in flight or delayed."""
    q = depth.queue
    return q.visible + q.in_flight + q.delayed


def dead_letters(depth: QueueDepth) -> int:
    return 0 if depth.dlq is None else depth.dlq.visible + depth.dlq.in_flight


class StallTimer:
    """How long the queue has been empty with an unfinished batch and a non-empty DLQ."""

    def __init__(self, grace: float, clock: Clock) -> None:
        self.grace = grace
        self.clock = clock
        self.since: float | None = None

    def stalled(self, progress: BatchProgress, depth: QueueDepth) -> bool:
        stuck = (not progress.complete and outstanding(depth) == 0
                 and dead_letters(depth) > 0)
        if not stuck:
            self.since = None
            return False
        if self.since is None:
            self.since = self.clock()
        return self.clock() - self.since >= self.grace


@dataclass(frozen=True)
class BatchWatch:
    progress: BatchProgress
    stopped: Literal["complete", "timeout", "stalled"]
    depth: QueueDepth | None  # the last queue reading (None without a queue URL)


def watch_batch(s3: Any, sqs: Any | None, output: S3Location, batch_id: str, *,
                queue_url: str | None, interval: float, timeout: float | None,
                dlq_grace: float, display: BatchDisplay = lambda p: None,
                clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> BatchWatch:
    """Poll the batch's markers (and the queue, when known) until it completes, stalls
    on the DLQ or ``timeout`` seconds pass."""
    deadline = None if timeout is None else clock() + timeout
    stall = StallTimer(dlq_grace, clock)
    while True:
        progress = batch_progress(s3, output, batch_id)
        depth = queue_depth(sqs, queue_url) if sqs is not None and queue_url else None
        display(progress)
        if progress.complete:
            return BatchWatch(progress, "complete", depth)
        if depth is not None and stall.stalled(progress, depth):
            return BatchWatch(progress, "stalled", depth)
        if deadline is not None and clock() >= deadline:
            return BatchWatch(progress, "timeout", depth)
        sleep(interval)


@dataclass(frozen=True)
class QueueWatch:
    depth: QueueDepth
    consumed: int  # messages that left the queue since the watch began
    started: float  # clock() at the start
    now: float
    stopped: Literal["running", "drained", "timeout"] = "running"

    @property
    def rate(self) -> float | None:
        elapsed = self.now - self.started
        return self.consumed / elapsed if self.consumed and elapsed > 0 else None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.rate
        return None if rate is None else outstanding(self.depth) / rate


def watch_queue(sqs: Any, queue_url: str, *, interval: float, timeout: float | None,
                display: QueueDisplay = lambda w: None, clock: Clock = time.monotonic,
                sleep: Sleep = time.sleep) -> QueueWatch:
    """Poll the queue until nothing is visible, in flight or delayed on two polls in a
    row (one empty reading can be SQS's approximation), or ``timeout`` seconds pass.

    ``consumed`` counts drops in the outstanding count, so messages sent meanwhile
    raise the remaining work rather than hiding progress.
    """
    started = clock()
    deadline = None if timeout is None else started + timeout
    previous: int | None = None
    consumed = 0
    empty_polls = 0
    while True:
        depth = queue_depth(sqs, queue_url)
        left = outstanding(depth)
        if previous is not None and left < previous:
            consumed += previous - left
        previous = left
        empty_polls = empty_polls + 1 if left == 0 else 0
        watch = QueueWatch(depth, consumed, started, clock())
        display(watch)
        if empty_polls >= 2:
            return QueueWatch(depth, consumed, started, watch.now, "drained")
        if deadline is not None and watch.now >= deadline:
            return QueueWatch(depth, consumed, started, watch.now, "timeout")
        sleep(interval)


@contextmanager
def batch_bar(batch_id: str) -> Iterator[BatchDisplay]:
    """A live progress bar on stderr: finished of total, done and failed, time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    if not bars_shown():
        yield lambda progress: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("done {task.fields[done]} failed {task.fields[failed]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bars:
        task = bars.add_task(batch_id, total=None, done=0, failed=0)

        def show(progress: BatchProgress) -> None:
            bars.update(task, total=progress.total, completed=progress.finished,
                        done=progress.done, failed=progress.failed)

        yield show


@contextmanager
def queue_bar(queue_url: str) -> Iterator[QueueDisplay]:
    """A live bar on stderr: messages consumed of consumed + outstanding, and the DLQ."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    if not bars_shown():
        yield lambda watch: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn("consumed {task.completed:.0f}, left {task.fields[left]}, "
                          "dlq {task.fields[dlq]}, eta {task.fields[eta]}"))
    name = queue_url.rsplit("/", 1)[-1]
    with Progress(*columns, console=Console(stderr=True)) as bars:
        task = bars.add_task(name, total=None, left="?", dlq="?", eta="unknown")

        def show(watch: QueueWatch) -> None:
            from producer.status import format_seconds

            left = outstanding(watch.depth)
            bars.update(task, total=watch.consumed + left, completed=watch.consumed,
                        left=left, dlq=dead_letters(watch.depth),
                        eta=format_seconds(watch.eta_seconds))

        yield show
