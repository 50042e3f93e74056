"""A fleet job's life cycle around the pipeline: what stops it from running (expired,
cancelled) and what is announced when it ends (its event, its batch's running totals,
the one ``batch.complete``). A callback URL the fleet refuses never stops a job: the
notifier logs the refusal and the job's event goes only where it may.

``ended`` runs on an I/O thread before the job's message is settled; it blocks only at the
end of a batch, for the delivery of ``batch.complete``."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from common.logs import log_extra
from contract.errors import Cancelled, Expired
from contract.result import FINAL_STATUSES, ResultRecord
from worker.fleet.batch_progress import BatchProgress, Completed
from worker.fleet.cancels import CancelWatch
from worker.fleet.events import Notifier, batch_event, job_event
from worker.fleet.fleet_jobs import FleetJob

log = logging.getLogger(__name__)


class JobLifecycle:
    def __init__(self, notifier: Notifier, progress: BatchProgress, cancels: CancelWatch,
                 *, worker_id: str) -> None:
        self.notifier = notifier
        self.progress = progress
        self.cancels = cancels
        self.worker_id = worker_id

    def refusal(self, job: FleetJob) -> Exception | None:
        """Why the job must not run (expired, cancelled), looking up its batch's cancel
        order when the last look is old (I/O)."""
        wire = job.job
        if wire.expires_at is not None and datetime.now(timezone.utc) > wire.expires_at:
            return Expired(f"received after its expires_at ({wire.expires_at.isoformat()})")
        reason = self.cancels.lookup(wire.output, job.batch_id, job.job_id)
        if reason is not None:
            return Cancelled(f"cancelled before it started: {reason}")
        return None

    def refusal_now(self, job: FleetJob) -> Exception | None:
        """The same for the cancel order as last read: no I/O (the engine thread asks,
        right before a batch runs)."""
        reason = self.cancels.known(job.job.output, job.batch_id, job.job_id)
        return Cancelled(f"cancelled before it started: {reason}") if reason else None

    def ended(self, job: FleetJob, record: ResultRecord, *, announce_job: bool) -> bool:
        """Count the job in its batch's totals; announce the job (unless an earlier
        delivery did) and, when it was the batch's last, the batch. False when the
        job's message must not be settled yet: it ended its batch, whose announcement
        was not delivered (the worker is stopping), and its redelivery announces it."""
        if record.status not in FINAL_STATUSES:
            return True
        wire = job.job
        if announce_job and (self.notifier.enabled or wire.callback_url):
            self.notifier.publish(job_event(record, output=record.output),
                                  callback_url=wire.callback_url)
        try:
            completed = self.progress.count(
                wire.output, job.batch_id, job.job_id, record.status,  # type: ignore[arg-type]
                gpu_seconds=record.gpu_seconds or 0.0, cost_usd=record.cost_usd,
                message_id=job.message_id)
        except Exception as exc:  # noqa: BLE001 - the job is done; its count is not vital
            log.warning("job %s: could not count it in its batch: %r", job.job_id, exc,
                        extra=log_extra(job))
            return True
        if completed is None:
            return True
        log.info("batch %s complete: %s", completed.batch_id,
                 completed.counts.model_dump(), extra={"batch_id": completed.batch_id})
        return self.announce(completed)

    def announce(self, completed: Completed) -> bool:
        """Publish ``batch.complete`` and wait for its delivery before the last job's
        message is settled: were this worker to die first, the message's redelivery
        announces the batch (see batch_progress). Whether it was announced."""
        ended = self.notifier.wait_delivered(self.notifier.publish(batch_event(
            completed.batch_id, completed.output_prefix, completed.total, completed.counts,
            self.worker_id)))
        if not ended:
            log.warning("batch %s: its event was not delivered before the stop (or is "
                        "still being delivered); not marked announced",
                        completed.batch_id, extra={"batch_id": completed.batch_id})
            return False
        try:
            self.progress.announced(completed)
        except Exception as exc:  # noqa: BLE001 - a later redelivery may announce it again
            log.warning("batch %s: could not mark it announced: %r", completed.batch_id, exc,
                        extra={"batch_id": completed.batch_id})
        return True

    def tick(self) -> None:
        """Periodic work (the waiter loop): read stale cancel orders of active batches."""
        self.cancels.refresh_stale()
