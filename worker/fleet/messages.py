"""Turning an SQS message body into jobs.

A body is one of (``contract.bodies``):
- a job message (the contract);
- an S3 ObjectCreated notification, turned into jobs with the worker's default
  parameters (upload to a prefix, get results, no producer run);
- S3's ``s3:TestEvent``, which is acknowledged and ignored;
- a job with invalid fields whose output key is its own: a failed result record;
- anything else: poison, released at once so SQS redrive moves it to the DLQ.

``decode_body`` is total: whatever the body, it returns a ``Decoded`` and never raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from pydantic import ValidationError

from contract.bodies import BodyKind, read_body
from contract.errors import InvalidJob, UnsupportedSchemaVersion
from contract.job import JobMessage, parse_job, unknown_fields
from contract.locations import S3Location, is_image_key, output_named_for
from contract.picks import pick_model_and_prompt
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

EVENTS_BATCH_ID = "s3-events"


@dataclass(frozen=True)
class BadJob:
    """A message that names its own result location but is not a valid job."""

    job_id: str
    batch_id: str | None
    output: S3Location
    input_uri: str
    error: InvalidJob


@dataclass(frozen=True)
class Decoded:
    jobs: list[JobMessage]
    bad_jobs: list[BadJob]
    poison: str | None = None  # why the body is not a job at all (released to the DLQ)
    ignored: str | None = None  # why a harmless body is acknowledged without work
    from_event: bool = False  # jobs made from an S3 notification
    notes: list[str] = field(default_factory=list)  # worth a log line, not a failure


def decode_body(body: str, settings: WorkerSettings) -> Decoded:
    """Decode a body into jobs; never raises (an unexpected error makes it poison)."""
    try:
        return _decode(body, settings)
    except Exception as exc:  # noqa: BLE001 - a message must never stop the receiver
        return Decoded([], [], poison=f"undecodable body ({type(exc).__name__}: {exc})")


def _decode(body: str, settings: WorkerSettings) -> Decoded:
    read = read_body(body)
    if read.kind is BodyKind.NOT_A_JOB:
        return Decoded([], [], poison=read.reason)
    if read.kind is BodyKind.S3_TEST_EVENT:
        return Decoded([], [], ignored="S3 test event")
    assert read.data is not None
    if read.kind is BodyKind.S3_EVENT:
        return _decode_s3_event(read.data["Records"], settings)
    data = read.data
    try:
        job = parse_job(data)
    except UnsupportedSchemaVersion as exc:
        return Decoded([], [], poison=str(exc))
    except InvalidJob as exc:
        bad = _recordable(data, exc)
        if bad is None:
            return Decoded([], [], poison=f"not a job: {exc}")
        return Decoded([], [bad])
    extra = unknown_fields(data)
    notes = [f"ignored unknown fields {extra[:10]} (a newer producer's?)"] if extra else []
    return Decoded([job], [], notes=notes)


def _recordable(data: dict, error: InvalidJob) -> BadJob | None:
    """A BadJob when the body has a job_id and an output key derived from it, else None.

    The derivation check means an invalid message can only write the failed record of
    its own job id: it cannot name (and overwrite) another job's record.
    """
    try:
        output = S3Location.model_validate(data.get("output"))
    except ValidationError:
        return None
    job_id = data.get("job_id")
    if (not isinstance(job_id, str) or not 8 <= len(job_id) <= 128
            or not job_id.replace("-", "").replace("_", "").isalnum() or not job_id.isascii()
            or output.key.endswith("/") or not output_named_for(output.key, job_id)):
        return None
    inp = data.get("input") if isinstance(data.get("input"), dict) else {}
    batch_id = data.get("batch_id")
    if not (isinstance(batch_id, str) and 0 < len(batch_id) <= 128
            and all(c.isalnum() or c in "._-" for c in batch_id) and batch_id.isascii()):
        batch_id = None
    return BadJob(job_id=job_id, batch_id=batch_id, output=output,
                  input_uri=f"s3://{inp.get('bucket', '?')}/{inp.get('key', '?')}"[:2048],
                  error=error)


def _decode_s3_event(records: list, settings: WorkerSettings) -> Decoded:
    """One job per image named by ObjectCreated records (records that repeat a job are
    one job); a bad record skips itself."""
    jobs: list[JobMessage] = []
    skipped: list[str] = []
    for index, record in enumerate(records):
        try:
            job = _event_job(record, settings)
        except (KeyError, TypeError, AttributeError, ValueError, InvalidJob) as exc:
            skipped.append(f"record {index}: malformed record ({_short(exc)})")
            continue
        if isinstance(job, str):
            skipped.append(f"record {index}: {job}")
        else:
            jobs.append(job)
    unique = list({job.job_id: job for job in reversed(jobs)}.values())[::-1]
    if not jobs:
        reason = f"S3 event with no image to process: {'; '.join(skipped)[:500]}"
        if any("malformed" in s or "invalid" in s for s in skipped):
            return Decoded([], [], poison=reason)
        return Decoded([], [], ignored=reason)
    notes = [f"skipped S3 event records: {'; '.join(skipped)[:500]}"] if skipped else []
    if len(unique) < len(jobs):
        # S3 may repeat a record; a hostile body may repeat one thousands of times.
        notes.append(f"{len(jobs) - len(unique)} records repeat an object of this event "
                     "(same key and ETag): each job runs once")
    return Decoded(unique, [], from_event=True, notes=notes)


def _event_job(record: object, settings: WorkerSettings) -> JobMessage | str:
    """The job for one event record, or why the record makes none."""
    if not isinstance(record, dict):
        return f"malformed record ({type(record).__name__}, not an object)"
    name = record.get("eventName")
    if not isinstance(name, str) or not name.startswith("ObjectCreated"):
        return f"not an ObjectCreated event ({str(name)[:60]})"
    s3 = record["s3"]
    bucket, key_raw = s3["bucket"]["name"], s3["object"]["key"]
    if not isinstance(bucket, str) or not isinstance(key_raw, str):
        return "malformed record (bucket name or key is not a string)"
    key = unquote_plus(key_raw)
    etag = s3["object"].get("eTag")
    prefix = settings.event_output_prefix
    if (prefix and key.startswith(prefix)) or "/_batches/" in key:
        return f"{key[:200]}: under the output prefix {prefix!r} (our own output)"
    if not is_image_key(key):
        return f"{key[:200]}: not an image file name"
    try:
        location = S3Location(bucket=bucket, key=key)
        model, prompt = pick_model_and_prompt(settings.default_models,
                                              settings.default_prompts, seed="event", name=key)
        params = settings.event_params(model=model, prompt=prompt)
        return JobMessage.create(
            input=location, input_etag=etag if isinstance(etag, str) else None,
            output_prefix=S3Location.model_construct(bucket=bucket, key=prefix),
            params=params, batch_id=EVENTS_BATCH_ID)
    except ValidationError as exc:
        return f"invalid bucket or key ({_short(exc)})"


def _short(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing {exc}"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
