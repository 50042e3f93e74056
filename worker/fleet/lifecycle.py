"""A fleet job's life cycle around the pipeline: what stops it from running (expired,
cancelled) and what is announced when it ends (its event, its batch's running totals,
the one ``batch.complete``). A callback URL the fleet refuses never stops a job: the
notifier logs the refusal and the job's event goes only where it may.

``ended`` runs on an I/O thread before the job's message is settled; it blocks only at the
end of a batch, for the delivery of ``batch.complete``."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from contract.errors import Cancelled, Expired
from contract.result import FINAL_STATUSES, ResultRecord
from worker.fleet.batch_progress import BatchProgress, Completed, Ended
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
        """One job: ``announce_job`` (unless an earlier delivery did), ``count``, and
        ``announce`` the batch it completed. False when the job's message must not be
        settled yet: its batch's announcement was not delivered (the worker is
        stopping), and its redelivery announces it."""
        if record.status not in FINAL_STATUSES:
            return True
        if announce_job:
            self.announce_job(job, record)
        return all(self.announce(batch) for batch in self.count([(job, record)]))

    def announce_job(self, job: FleetJob, record: ResultRecord) -> None:
        """The job's event, to wherever events go (delivered in the background)."""
        wire = job.job
        if record.status in FINAL_STATUSES and (self.notifier.enabled or wire.callback_url):
            self.notifier.publish(job_event(record, output=record.output),
                                  callback_url=wire.callback_url)

    def count(self, ended: list[tuple[FleetJob, ResultRecord]]) -> list[Completed]:
        """Count jobs that ended close together in their batches' totals (one write per
        counter they touch); the batches they completed, to ``announce`` before the
        message each names (``Completed.message_id``) is settled."""
        ends = [Ended(job.job.output, job.batch_id, job.job_id,
                      record.status,  # type: ignore[arg-type]
                      gpu_seconds=record.gpu_seconds or 0.0,
                      cost_usd=record.cost_usd, message_id=job.message_id)
                for job, record in ended if job.batch_id and record.status in FINAL_STATUSES]
        try:
            completed = self.progress.count_all(ends)
        except Exception as exc:  # noqa: BLE001 - the jobs are done; counts are not vital
            log.warning("could not count %d job(s) in their batches: %r", len(ends), exc)
            return []
        for batch in completed:
            log.info("batch %s complete: %s", batch.batch_id, batch.counts.model_dump(),
                     extra={"batch_id": batch.batch_id})
        return completed

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
