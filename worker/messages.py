"""Turning an SQS message body into jobs.

A body is one of:
- a job message (the contract);
- an S3 ObjectCreated notification, turned into jobs with the worker's default
  parameters (upload to a prefix, get results, no producer run);
- S3's ``s3:TestEvent``, which is acknowledged and ignored;
- something with an output location but invalid fields: a failed result record;
- anything else: poison, released at once so SQS redrive moves it to the DLQ.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from urllib.parse import unquote_plus

from pydantic import ValidationError

from contract.errors import InvalidJob
from contract.job import JobMessage, parse_job
from contract.locations import S3Location
from worker.images import IMAGE_EXTENSIONS
from worker.settings import WorkerSettings

EVENTS_BATCH_ID = "s3-events"


@dataclass(frozen=True)
class BadJob:
    """A message that names where its result goes but is not a valid job."""

    job_id: str
    batch_id: str | None
    output: S3Location
    input_uri: str
    error: InvalidJob


@dataclass(frozen=True)
class Decoded:
    jobs: list[JobMessage]
    bad_jobs: list[BadJob]
    poison: str | None = None  # why the body is not a job at all
    ignored: str | None = None  # why a harmless body is acknowledged without work


def decode_body(body: str, settings: WorkerSettings) -> Decoded:
    try:
        data = json.loads(body)
    except ValueError as exc:
        return Decoded([], [], poison=f"body is not JSON: {exc}")
    if not isinstance(data, dict):
        return Decoded([], [], poison=f"body is JSON {type(data).__name__}, not an object")
    if data.get("Event") == "s3:TestEvent":
        return Decoded([], [], ignored="S3 test event")
    if "Records" in data:
        return _decode_s3_event(data["Records"], settings)
    try:
        return Decoded([parse_job(data)], [])
    except InvalidJob as exc:
        bad = _recordable(data, exc)
        if bad is None:
            return Decoded([], [], poison=f"not a job: {exc}")
        return Decoded([], [bad])


def _recordable(data: dict, error: InvalidJob) -> BadJob | None:
    """A BadJob when the body has a usable job_id and output location, else None."""
    try:
        output = S3Location.model_validate(data.get("output"))
    except ValidationError:
        return None
    job_id = data.get("job_id")
    if not isinstance(job_id, str) or not job_id or output.key.endswith("/"):
        return None
    inp = data.get("input") if isinstance(data.get("input"), dict) else {}
    batch_id = data.get("batch_id") if isinstance(data.get("batch_id"), str) else None
    return BadJob(job_id=job_id[:128], batch_id=batch_id, output=output,
                  input_uri=f"s3://{inp.get('bucket', '?')}/{inp.get('key', '?')}",
                  error=error)


def _decode_s3_event(records: object, settings: WorkerSettings) -> Decoded:
    if not isinstance(records, list):
        return Decoded([], [], poison="S3 event 'Records' is not a list")
    jobs: list[JobMessage] = []
    skipped: list[str] = []
    for record in records:
        try:
            if not str(record["eventName"]).startswith("ObjectCreated"):
                skipped.append(str(record["eventName"]))
                continue
            bucket = record["s3"]["bucket"]["name"]
            key = unquote_plus(record["s3"]["object"]["key"])
            etag = record["s3"]["object"].get("eTag")
        except (KeyError, TypeError) as exc:
            return Decoded([], [], poison=f"malformed S3 event record: missing {exc}")
        prefix = settings.event_output_prefix
        if (prefix and key.startswith(prefix)) or not key.lower().endswith(
                tuple(IMAGE_EXTENSIONS)) or "/_batches/" in key:
            skipped.append(key)  # our own outputs, records, or not an image
            continue
        rng = random.Random(f"event:{key}")
        params = settings.event_params(model=rng.choice(settings.default_models),
                                       prompt=rng.choice(settings.default_prompts))
        jobs.append(JobMessage.create(
            input=S3Location(bucket=bucket, key=key), input_etag=etag,
            output_prefix=S3Location.model_construct(bucket=bucket, key=prefix),
            params=params, batch_id=EVENTS_BATCH_ID))
    if not jobs:
        return Decoded([], [], ignored=f"S3 event with no image to process: {skipped}")
    return Decoded(jobs, [])
