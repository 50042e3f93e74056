"""A job that another delivery already ended: what this delivery does with it.

Either an earlier delivery of this very message ended it and then lost the message (a
crash before the delete), or another message did: a duplicate delivery, or the same job
enqueued in another batch (a twin: same input and parameters, so the same job id). The
job never runs again; the delivery is acknowledged with an outcome that says where the
job still has to be marked and counted.
"""

from __future__ import annotations

from contract.result import ResultRecord
from worker.fleet import fleet_jobs
from worker.fleet.fleet_jobs import FleetJob
from worker.fleet.storage import S3Storage
from worker.jobs import Outcome, Status


def ended_by_this_message(storage: S3Storage, job: FleetJob) -> Outcome:
    """Acknowledge, and mark and count the job, since the earlier delivery may not have
    (a count too many is caught when the batch's markers are counted)."""
    data = job.found
    if data is None:
        data, _ = storage.read_json(job.result_location())
    record = ResultRecord.model_validate(data)
    fleet_jobs.write_marker(storage, job.job.output, job.batch_id, job.job_id, record.status)
    return Outcome(Status.DUPLICATE, record=record,
                   reason="ended by an earlier delivery of this message")


def finished_elsewhere(storage: S3Storage, job: FleetJob) -> Outcome:
    """The job runs once, but it ends in every batch that holds it: leave its marker in
    this delivery's batch and, when that batch is not the one the record names, count it
    there too (without the engine time, which the batch that ran it carries), so that
    batch completes and is announced."""
    try:
        record = ResultRecord.model_validate(job.found)
    except ValueError:
        record = None  # unreadable: at least mark it done
    status = record.status if record is not None else "done"
    fleet_jobs.write_marker(storage, job.job.output, job.batch_id, job.job_id, status)
    if record is None or not job.batch_id or record.batch_id == job.batch_id:
        return Outcome(Status.DUPLICATE, reason=f"already {status}")
    twin = record.model_copy(update={"batch_id": job.batch_id, "gpu_seconds": 0.0,
                                     "cost_usd": None})
    return Outcome(Status.DUPLICATE, record=twin,
                   reason=f"already {status} in batch {record.batch_id}")
