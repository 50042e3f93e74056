"""The batch's jobs as enqueued, kept next to its manifest (``_batches/<id>/jobs.jsonl``).

Result records say what happened (model, prompt, seed, timings) but not every parameter
a job asked for; this file does, so the gallery can show strength and steps for jobs
this producer enqueued. Batches from other producers have none, and show without them.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError

from contract.job import JobMessage
from contract.locations import S3Location, batch_jobs_key

# What the gallery shows of each job beyond its record.
SHOWN_PARAMETERS = ("strength", "steps")


def write_batch_jobs(s3: Any, output: S3Location, batch_id: str,
                     jobs: list[JobMessage]) -> S3Location:
    where = S3Location(bucket=output.bucket, key=batch_jobs_key(output.key, batch_id))
    body = "".join(job.to_json() + "\n" for job in jobs).encode()
    s3.put_object(Bucket=where.bucket, Key=where.key, Body=body,
                  ContentType="application/x-ndjson")
    return where


def read_batch_jobs(s3: Any, output: S3Location, batch_id: str) -> list[dict[str, Any]] | None:
    """The batch's jobs as sent (each a JSON object with a ``job_id``), or None when the
    batch has no jobs file (enqueued by another producer)."""
    key = batch_jobs_key(output.key, batch_id)
    try:
        body = s3.get_object(Bucket=output.bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    found: list[dict[str, Any]] = []
    for line in body.decode("utf-8", "replace").splitlines():
        try:
            job = json.loads(line)
        except ValueError:
            continue
        if isinstance(job, dict) and isinstance(job.get("job_id"), str):
            found.append(job)
    return found


def job_parameters(s3: Any, output: S3Location, batch_id: str) -> dict[str, dict[str, Any]]:
    """job_id -> the shown parameters, from the batch's jobs file ({} when it has none)."""
    return {job["job_id"]: {k: job[k] for k in SHOWN_PARAMETERS if k in job}
            for job in read_batch_jobs(s3, output, batch_id) or []}
