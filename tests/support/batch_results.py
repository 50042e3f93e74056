"""A batch enqueued by the real producer and finished the way a worker finishes jobs:
output (conditional PUT), result record next to it, marker under _batches/. Fast and
deterministic, for the commands that only read a batch's results (fetch, gallery)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageOps
from typer.testing import CliRunner

from contract.job import JobMessage, parse_job
from contract.locations import batch_marker_key, result_key
from contract.result import ErrorInfo, ResultRecord
from producer.cli import app
from tests.support.paths import SAMPLES

runner = CliRunner()


def put_samples(s3: Any, bucket: str, prefix: str = "in/") -> list[str]:
    """The repository's sample pictures under ``prefix``; their keys."""
    keys = []
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix in (".jpg", ".png"):
            keys.append(prefix + path.name)
            s3.put_object(Bucket=bucket, Key=keys[-1], Body=path.read_bytes())
    return keys


def enqueue(bucket: str, *args: str, source: str = "in/") -> list[JobMessage]:
    """Enqueue with the real CLI (manifest and jobs file written); the jobs it sent."""
    command = ["enqueue", f"s3://{bucket}/{source}", "-m", "tiny", "-p", "a test",
               "--strength", "0.6", "--steps", "10", *args]
    sent = runner.invoke(app, command)
    assert sent.exit_code == 0, sent.output
    dry = runner.invoke(app, [*command, "--dry-run"])
    return [parse_job(line) for line in dry.stdout.splitlines()]


def finish(s3: Any, job: JobMessage, *, fail: str | None = None) -> None:
    """What a worker leaves for a job: an output and a done record, or a failed record."""
    bucket = job.output.bucket
    if fail is None:
        source = s3.get_object(Bucket=job.input.bucket, Key=job.input.key)["Body"].read()
        with Image.open(io.BytesIO(source)) as image:
            buffer = io.BytesIO()
            ImageOps.invert(image.convert("RGB")).save(buffer, "PNG")
        s3.put_object(Bucket=bucket, Key=job.output.key, Body=buffer.getvalue(),
                      ContentType="image/png", IfNoneMatch="*")
        record = ResultRecord(job_id=job.job_id, batch_id=job.batch_id, status="done",
                              input=job.input.uri, output=job.output.uri, model=job.model,
                              prompt=job.prompt, seed=7, seconds=1.5, worker="w-test")
    else:
        record = ResultRecord(job_id=job.job_id, batch_id=job.batch_id, status="failed",
                              input=job.input.uri, error=ErrorInfo(type="GenerationFailed",
                                                                   message=fail),
                              model=job.model, prompt=job.prompt, seconds=0.2,
                              worker="w-test")
    s3.put_object(Bucket=bucket, Key=result_key(job.output.key), Body=record.to_json(),
                  ContentType="application/json")
    s3.put_object(Bucket=bucket, Key=batch_marker_key(job.output.key, job.batch_id,
                                                      job.job_id, record.status), Body=b"")


def enqueue_batch(fleet, s3, n: int) -> list:
    for i in range(n):
        s3.put_object(Bucket=fleet.bucket, Key=f"in/{i}.png", Body=f"image {i}".encode())
    args = ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "tiny", "-p", "p"]
    dry = runner.invoke(app, args + ["--dry-run"])
    sent = runner.invoke(app, args)
    assert sent.exit_code == 0, sent.output
    return [parse_job(line) for line in dry.stdout.splitlines()]


def mark(s3, job, status: str) -> None:
    s3.put_object(Bucket=job.output.bucket, Body=b"",
                  Key=batch_marker_key(job.output.key, job.batch_id, job.job_id, status))
