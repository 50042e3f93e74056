"""A fleet job (one job of an SQS message) and its S3 work around the engine: claim it,
read and prepare its input, write its output, result record and batch marker. Runs in
the worker's I/O threads.

The result record is also the job's claim. Before any work, a worker writes a
``running`` record with a conditional PUT; a second delivery of the same job (another
message, another worker) finds it and waits for the outcome instead of running the
job again. A record is only ever written by the job that owns it:
- ``done`` only after this job's conditional PUT wrote the output, or the output found
  there was written by this job (its ``job-id`` metadata) in an earlier delivery;
- ``failed`` over this job's own claim; a message that failed validation writes its
  failed record only where no record is yet, at a key derived from its own job id.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum

from PIL import Image

from contract.errors import LocationNotAllowed, OutputConflict
from contract.job import JobMessage
from contract.locations import (
    S3Location,
    batch_marker_key,
    batch_marker_keys,
    is_within,
    output_dir,
    result_key,
)
from contract.result import FINAL_STATUSES, ResultRecord
from worker.fleet.consumer import Delivery
from worker.fleet.storage import S3Storage
from worker.images import PixelBudget, decode_and_prepare, encode_image, restore_size
from worker.jobs import Job
from worker.settings import WorkerSettings

JSON = "application/json"
JOB_ID_METADATA = "job-id"  # user metadata on every output: which job wrote it
_CLAIM_ATTEMPTS = 3


class OwnOutput(Exception):
    """An S3 notification's object is one of this fleet's outputs: not an input."""


class Claim(str, Enum):
    CLAIMED = "claimed"  # this delivery runs the job
    FINISHED = "finished"  # another delivery ended it (done; or failed while we waited)
    FINISHED_HERE = "finished-here"  # an earlier delivery of this very message ended it
    WAIT = "wait"  # another delivery is running it now: wait for its outcome


@dataclass(eq=False)
class FleetJob(Job):
    """One job of a received message."""

    wire: JobMessage | None = None  # the job as the message carried it
    delivery: Delivery | None = None
    from_event: bool = False  # made from an S3 notification
    claimed: bool = False  # this delivery holds the job's running record
    found: dict | None = None  # the final record another delivery left (FINISHED*)
    marker_due: bool = False  # done, its batch marker not written yet (written in groups)

    @classmethod
    def of(cls, wire: JobMessage, delivery: Delivery, *, from_event: bool) -> FleetJob:
        return cls(job_id=wire.job_id, params=wire.params, source=wire.input.uri,
                   batch_id=wire.batch_id, received_at=delivery.message.received_at,
                   timeout_seconds=wire.timeout_seconds, wire=wire, delivery=delivery,
                   from_event=from_event)

    @property
    def job(self) -> JobMessage:
        assert self.wire is not None
        return self.wire

    @property
    def message_id(self) -> str:
        return self.delivery.message_id if self.delivery is not None else ""

    def result_location(self) -> S3Location:
        return record_location(self.job.output)


def record_location(output: S3Location) -> S3Location:
    return S3Location(bucket=output.bucket, key=result_key(output.key))


def check_locations(job: JobMessage, settings: WorkerSettings) -> None:
    """Input must lie under IMG2IMG_ALLOWED_INPUTS and output under ..._OUTPUTS (if set)."""
    if settings.allowed_inputs and not is_within(job.input, settings.allowed_inputs):
        raise LocationNotAllowed(
            f"input {job.input.uri} is outside IMG2IMG_ALLOWED_INPUTS "
            f"({','.join(settings.allowed_inputs)})")
    if settings.allowed_outputs and not is_within(job.output, settings.allowed_outputs):
        raise LocationNotAllowed(
            f"output {job.output.uri} is outside IMG2IMG_ALLOWED_OUTPUTS "
            f"({','.join(settings.allowed_outputs)})")


def output_allowed(output: S3Location, settings: WorkerSettings) -> bool:
    return not settings.allowed_outputs or is_within(output, settings.allowed_outputs)


# -- the claim ---------------------------------------------------------------------------

def claim(storage: S3Storage, job: FleetJob, *, worker_id: str,
          lease_seconds: float) -> Claim:
    """Write this delivery's running record unless the job is done or running elsewhere.

    A running record is taken over when it is for this very message (its worker lost
    it: crashed, or its heartbeat failed), or when its lease ran out; a failed,
    cancelled or expired record when another message wrote it (the job was enqueued
    again). The takeover is conditional on the record not having changed since it was
    read. A final record this very message wrote is FINISHED_HERE: its earlier delivery
    ended the job and then lost the message (acknowledge it, and count it).
    """
    location = job.result_location()
    for _ in range(_CLAIM_ATTEMPTS):
        body = _running_record(job, worker_id, lease_seconds).to_json().encode()
        if storage.put_if_absent(location, body, JSON):
            job.claimed = True
            return Claim.CLAIMED
        data, etag = storage.read_json(location)
        if data is None:
            continue  # deleted meanwhile (a release): try the clean claim again
        status = data.get("status")
        if status == "done" or (status in FINAL_STATUSES
                                and _finished(data, job) is Claim.FINISHED_HERE):
            job.found = data
            return _finished(data, job)  # a failed record of another message: run again
        if status == "running" and not _claim_lapsed(data, job.message_id):
            return Claim.WAIT
        if etag and storage.put_if_match(location, body, JSON, etag):
            job.claimed = True
            return Claim.CLAIMED
    return Claim.WAIT  # the record keeps changing under us: someone else is on it


def recheck(storage: S3Storage, job: FleetJob, *, worker_id: str,
            lease_seconds: float) -> Claim:
    """For a delivery that waits on another: FINISHED once that one ended the job (done
    or failed: either way the job is not run twice), else a new ``claim`` when it let
    go (released, or its lease ran out), else WAIT."""
    data, _ = storage.read_json(job.result_location())
    if data is not None and data.get("status") in FINAL_STATUSES:
        job.found = data
        return _finished(data, job)
    if data is not None and data.get("status") == "running" and not _claim_lapsed(
            data, job.message_id):
        return Claim.WAIT
    return claim(storage, job, worker_id=worker_id, lease_seconds=lease_seconds)


def _finished(data: dict, job: FleetJob) -> Claim:
    same = bool(job.message_id) and data.get("message_id") == job.message_id
    return Claim.FINISHED_HERE if same else Claim.FINISHED


def release_claim(storage: S3Storage, job: FleetJob) -> None:
    """Drop this delivery's running record (the job is released for a retry)."""
    if job.claimed:
        storage.delete(job.result_location())
        job.claimed = False


def _running_record(job: FleetJob, worker_id: str, lease_seconds: float) -> ResultRecord:
    now = datetime.now(timezone.utc)
    return ResultRecord(
        job_id=job.job_id, batch_id=job.batch_id, status="running", input=job.source,
        model=job.params.model, prompt=job.params.prompt, seed=job.seed, worker=worker_id,
        finished_at=now, claimed_until=now + timedelta(seconds=lease_seconds),
        message_id=job.message_id or None)


def _claim_lapsed(data: dict, message_id: str) -> bool:
    if message_id and data.get("message_id") == message_id:
        return True  # this very message came back: its former holder lost it
    try:
        until = datetime.fromisoformat(str(data.get("claimed_until")))
    except ValueError:
        return True
    if until.tzinfo is None:
        until = until.replace(tzinfo=timezone.utc)
    return until < datetime.now(timezone.utc)


# -- input -------------------------------------------------------------------------------

def read_and_prepare(storage: S3Storage, job: FleetJob, settings: WorkerSettings,
                     budget: PixelBudget | None = None) -> None:
    started = time.perf_counter()
    stored = storage.read_object(job.job.input)
    if job.from_event and JOB_ID_METADATA in stored.metadata:
        raise OwnOutput(f"{job.source} was written by job "
                        f"{stored.metadata[JOB_ID_METADATA]}: an output, not an input")
    downloaded = time.perf_counter()
    job.prepared = decode_and_prepare(
        stored.body, max_pixels=settings.max_input_pixels, max_side=job.params.max_side,
        size_bucket=settings.size_bucket, name=job.source, budget=budget)
    job.timings["download"] = downloaded - started
    job.timings["decode"] = time.perf_counter() - downloaded


# -- outcomes ----------------------------------------------------------------------------

def write_output(storage: S3Storage, job: FleetJob, output: Image.Image,
                 worker_id: str, gpu_price_per_hour: float | None = None) -> ResultRecord:
    """Conditional PUT of the output, then the done record. The batch marker is due
    (``write_markers``, with the other jobs ended at the same time).

    When the output key is taken, the object must be this job's (an earlier delivery
    that ended before its record); anything else there is an OutputConflict.
    """
    wire = job.job
    assert job.prepared is not None
    started = time.perf_counter()
    data = encode_image(restore_size(output, job.prepared, wire.keep_size), wire.output_format)
    encoded = time.perf_counter()
    written = storage.put_if_absent(wire.output, data, wire.output_format.content_type,
                                    metadata={JOB_ID_METADATA: job.job_id})
    if not written:
        owner = (storage.head_metadata(wire.output) or {}).get(JOB_ID_METADATA)
        if owner != job.job_id:
            raise OutputConflict(
                f"output {wire.output.uri} already holds an object "
                f"{'of job ' + owner if owner else 'not written by any job'}; this job "
                "does not overwrite it")
    job.timings["encode"] = encoded - started
    job.timings["upload"] = time.perf_counter() - encoded
    record = job.done_record(wire.output.uri, worker_id,
                             gpu_price_per_hour=gpu_price_per_hour).model_copy(
        update={"message_id": job.message_id or None})
    storage.put(job.result_location(), record.to_json().encode(), JSON)
    job.claimed = False
    job.marker_due = bool(job.batch_id)
    return record


def write_final(storage: S3Storage, record: ResultRecord, output: S3Location, *,
                claimed: bool) -> bool:
    """A record without an output (failed, cancelled, expired) at ``<output key>.json``,
    and its batch marker.

    Unclaimed (a message that failed validation, a job refused before its claim), the
    record is written only where there is none yet: returns False when one was there
    (nothing is overwritten).
    """
    body = record.to_json().encode()
    if claimed:
        storage.put(record_location(output), body, JSON)
    elif not storage.put_if_absent(record_location(output), body, JSON):
        return False
    write_marker(storage, output, record.batch_id, record.job_id, record.status)
    return True


def write_markers(storage: S3Storage, jobs: list[FleetJob], status: str) -> None:
    """The markers of jobs that ended with ``status``: one object per batch (and output
    folder) for all of its jobs here, as far as S3's key length allows."""
    groups: dict[tuple[str, str, str], list[FleetJob]] = {}
    for job in jobs:
        if job.batch_id:
            output = job.job.output
            groups.setdefault((output.bucket, output_dir(output.key), job.batch_id),
                              []).append(job)
    for (bucket, _, batch_id), members in groups.items():
        for key in batch_marker_keys(members[0].job.output.key, batch_id,
                                     [job.job_id for job in members], status):
            storage.put(S3Location(bucket=bucket, key=key), b"", "application/octet-stream")
    for job in jobs:
        job.marker_due = False


def write_marker(storage: S3Storage, output: S3Location, batch_id: str | None, job_id: str,
                 status: str) -> None:
    if batch_id:
        storage.put(S3Location(bucket=output.bucket,
                               key=batch_marker_key(output.key, batch_id, job_id, status)),
                    b"", "application/octet-stream")
