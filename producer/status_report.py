"""``img2img-producer status``: gather the queue, a batch (watched or not) or the recent
batches, then say it for people (lines) or for programs (JSON)."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contract.errors import InvalidJob
from contract.locations import S3Location
from contract.result import ResultRecord
from producer.batches import recent_batches
from producer.output_prefix import require_output
from producer.queues import QueueDepth, queue_depth
from producer.status import BatchProgress, batch_progress, failed_records, utc_now
from producer.watch import (
    BatchDisplay,
    QueueDisplay,
    dead_letters,
    outstanding,
    watch_batch,
    watch_queue,
)

NO_QUEUE_HINT = "pass --queue-url or set IMG2IMG_QUEUE_URL"


@dataclass(frozen=True)
class StatusRequest:
    batch_id: str | None
    output: S3Location | None
    queue_url: str | None
    watch: bool = False
    failures: bool = False
    interval: float = 5.0
    timeout: float | None = None
    dlq_grace: float = 60.0
    limit: int = 10  # batches listed without --batch-id
    priority_queue_url: str | None = None  # shown too: high-priority jobs wait there


@dataclass
class StatusReport:
    queue_url: str | None
    depth: QueueDepth | None
    output: S3Location | None
    batch: BatchProgress | None = None
    batches: list[BatchProgress] | None = None  # without --batch-id, when outputs are known
    failures: list[ResultRecord] | None = None
    watched: str | None = None  # how a watch ended: complete, drained, timeout, stalled
    timeout: float | None = None
    priority_url: str | None = None
    priority_depth: QueueDepth | None = None
    now: datetime = field(default_factory=utc_now)

    @property
    def exit_code(self) -> int:
        """1 when a watch ended without its work done (timeout, DLQ stall, DLQ left)."""
        if self.watched in ("timeout", "stalled"):
            return 1
        if self.watched == "drained" and self.depth is not None and dead_letters(self.depth):
            return 1
        return 0

    def lines(self) -> list[str]:
        """What people read on stdout."""
        out = self._queue_lines()
        if self.batch is not None:
            out.append(self.batch.line(self.now))
            for record in self.failures or []:
                error = record.error
                out.append(f"  failed {record.job_id} {record.input}: "
                           f"{error.type if error else '?'}: {error.message if error else ''}")
        if self.batches is not None and self.output is not None:
            if not self.batches:
                out.append(f"no batches under {self.output.uri} (no _batches/ folder)")
            else:
                out.append(f"batches under {self.output.uri}, newest first:")
                for progress in self.batches:
                    created = (f"{progress.started_at:%Y-%m-%d %H:%M:%S} UTC"
                               if progress.manifest else "created ?")
                    out.append(f"  {created}  {progress.line(self.now)}")
                    if progress.manifest is not None:
                        out.append(f"    {what_it_ran(progress.manifest)}")
        elif self.batch is None and self.output is None:
            out.append("recent batches: pass --output s3://bucket/prefix/ or set "
                       "IMG2IMG_BUCKET to list them")
        return out

    def _queue_lines(self) -> list[str]:
        lines = ([] if self.priority_depth is None
                 else _depth_lines(self.priority_url, self.priority_depth, "priority queue"))
        if self.depth is None:
            return lines if self.batch is not None else [
                *lines, f"queue: unknown ({NO_QUEUE_HINT})"]
        return lines + _depth_lines(self.queue_url, self.depth, "queue")

    def problems(self) -> list[str]:
        """What people read on stderr: why a watch stopped short."""
        if self.watched == "timeout":
            return [f"gave up after {self.timeout} s: {self._why_unfinished()}"]
        if self.watched == "stalled" and self.batch is not None and self.depth is not None:
            left = (self.batch.total or 0) - self.batch.finished
            return [f"batch {self.batch.batch_id}: {left} job(s) unfinished, nothing is "
                    f"left on the queue and the DLQ holds {dead_letters(self.depth)} "
                    "message(s): they will not finish by themselves. Read the workers' "
                    "logs, fix the cause, then: img2img-producer redrive"]
        if self.exit_code and self.watched == "drained" and self.depth is not None:
            return [f"the queue is drained but the DLQ holds {dead_letters(self.depth)} "
                    "message(s): read the workers' logs, then: img2img-producer redrive"]
        return []

    def _why_unfinished(self) -> str:
        """What the queue says about work left when a watch timed out."""
        if self.depth is None:
            return f"the queue is unknown ({NO_QUEUE_HINT} to see why)"
        queue, dlq = self.depth.queue, dead_letters(self.depth)
        waiting = queue.visible + queue.delayed
        parts = []
        if queue.in_flight:
            parts.append(f"{queue.in_flight} message(s) in flight: workers are on them "
                         "(a longer --timeout may see them end)")
        elif waiting:
            parts.append(f"{waiting} message(s) wait on the queue and none is in flight: "
                         "no worker is taking them (start one: img2img-worker serve)")
        if dlq:
            parts.append(f"the DLQ holds {dlq} message(s) (read the workers' logs, then: "
                         "img2img-producer redrive)")
        if not parts:
            return ("nothing is on the queue or in the DLQ: the unfinished jobs' messages "
                    "are gone (check --batch-id and --output)")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """The same facts for programs; absent parts are null."""
        depth, high = self.depth, self.priority_depth
        return {
            "priority_queue": None if high is None else {
                "url": self.priority_url, "visible": high.queue.visible,
                "in_flight": high.queue.in_flight, "delayed": high.queue.delayed,
                "dlq_visible": high.dlq.visible if high.dlq else None},
            "queue": None if depth is None else {
                "url": self.queue_url, "visible": depth.queue.visible,
                "in_flight": depth.queue.in_flight, "delayed": depth.queue.delayed,
                "outstanding": outstanding(depth)},
            "dlq": None if depth is None or depth.dlq is None else {
                "url": depth.dlq_url, "visible": depth.dlq.visible,
                "in_flight": depth.dlq.in_flight},
            "batch": None if self.batch is None else self.batch.to_dict(self.now),
            "batches": None if self.batches is None else [
                b.to_dict(self.now) for b in self.batches],
            "failures": None if self.failures is None else [
                {"job_id": r.job_id, "input": r.input,
                 "error_type": r.error.type if r.error else None,
                 "message": r.error.message if r.error else None} for r in self.failures],
            "watch": None if self.watched is None else {"stopped": self.watched},
            "exit_code": self.exit_code,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def collect_status(request: StatusRequest, *, make_s3: Callable[[], Any],
                   make_sqs: Callable[[], Any],
                   batch_display: Callable[[str], AbstractContextManager[BatchDisplay]],
                   queue_display: Callable[[str], AbstractContextManager[QueueDisplay]]
                   ) -> StatusReport:
    """Read (and with ``watch``, follow) what ``request`` asks about."""
    report = _status(request, make_s3, make_sqs, batch_display, queue_display)
    if request.priority_queue_url:
        report.priority_url = request.priority_queue_url
        report.priority_depth = queue_depth(make_sqs(), request.priority_queue_url)
    return report


PROMPT_SHOWN = 60  # characters of a prompt in the batch list


def what_it_ran(manifest: Any) -> str:
    """A batch's source, models and prompts, on one line of the batch list."""
    def named(values: list[str] | None) -> str:
        return "?" if not values else ", ".join(values)

    prompts = [p if len(p) <= PROMPT_SHOWN else p[:PROMPT_SHOWN - 3] + "..."
               for p in manifest.prompts or []]
    return (f"source {manifest.source}; model {named(manifest.models)}; prompt "
            f"{named([repr(p) for p in prompts])}")


def _depth_lines(url: str | None, depth: QueueDepth, name: str) -> list[str]:
    q = depth.queue
    lines = [f"{name} {url}: visible {q.visible}, in flight {q.in_flight}, "
             f"delayed {q.delayed}"]
    if depth.dlq is None:
        lines.append("dlq: none (the queue has no RedrivePolicy)")
    else:
        lines.append(f"dlq {depth.dlq_url}: {depth.dlq.visible} messages "
                     f"({depth.dlq.in_flight} in flight)")
    return lines


def _status(request: StatusRequest, make_s3: Callable[[], Any], make_sqs: Callable[[], Any],
            batch_display: Callable[[str], AbstractContextManager[BatchDisplay]],
            queue_display: Callable[[str], AbstractContextManager[QueueDisplay]]
            ) -> StatusReport:
    if request.batch_id:
        return _batch_status(request, make_s3, make_sqs, batch_display)
    if request.failures:
        raise InvalidJob("--failures needs --batch-id")
    url = request.queue_url
    if not url and request.output is None:
        raise InvalidJob(f"nothing to show: no queue URL ({NO_QUEUE_HINT}) and no output "
                         "prefix (pass --output s3://bucket/prefix/ or set IMG2IMG_BUCKET)")
    report = StatusReport(queue_url=url, depth=None, output=request.output,
                          timeout=request.timeout)
    if request.watch:
        if not url:
            raise InvalidJob(f"--watch without --batch-id follows the queue: {NO_QUEUE_HINT}")
        with queue_display(url) as show:
            watched = watch_queue(make_sqs(), url, interval=request.interval,
                                  timeout=request.timeout, display=show)
        report.depth, report.watched = watched.depth, watched.stopped
    elif url:
        report.depth = queue_depth(make_sqs(), url)
    if request.output is not None:
        report.batches = recent_batches(make_s3(), request.output, limit=request.limit)
    report.now = utc_now()
    return report


def _batch_status(request: StatusRequest, make_s3: Callable[[], Any],
                  make_sqs: Callable[[], Any],
                  batch_display: Callable[[str], AbstractContextManager[BatchDisplay]]
                  ) -> StatusReport:
    batch_id, output = request.batch_id, require_output(request.output)
    assert batch_id is not None
    s3 = make_s3()
    progress = batch_progress(s3, output, batch_id)
    if not progress.exists:
        raise InvalidJob(f"no batch {batch_id} under {output.uri}: no manifest and no "
                         "finished job; check --batch-id and --output")
    if request.watch and progress.manifest is None:
        raise InvalidJob(f"no manifest for batch {batch_id} under {output.uri}, so its "
                         "total is unknown and --watch cannot tell when it ends")
    url = request.queue_url or (progress.manifest.queue_url if progress.manifest else None)
    sqs = make_sqs() if url else None
    report = StatusReport(queue_url=url, depth=None, output=output, batch=progress,
                          timeout=request.timeout)
    if request.watch and not progress.complete:
        with batch_display(batch_id) as show:
            watched = watch_batch(s3, sqs, output, batch_id, queue_url=url,
                                  interval=request.interval, timeout=request.timeout,
                                  dlq_grace=request.dlq_grace, display=show)
        report.batch, report.depth, report.watched = (watched.progress, watched.depth,
                                                      watched.stopped)
    if report.depth is None and sqs is not None and url:
        report.depth = queue_depth(sqs, url)
    if request.failures:
        report.failures = (failed_records(s3, output, report.batch.failed_job_ids)
                           if report.batch and report.batch.failed_job_ids else [])
    report.now = utc_now()
    return report

