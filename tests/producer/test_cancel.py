"""``img2img-producer cancel``: what it writes and what it refuses (the workers' side of
cancel orders is in tests/worker/fleet/test_lifecycle_worker.py)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from contract.locations import batch_cancel_key, batch_jobs_key
from producer.cli import app
from tests.support.batch_results import enqueue_batch

runner = CliRunner()


def cancel(fleet, batch_id: str, *extra: str):
    return runner.invoke(app, ["cancel", "--batch-id", batch_id,
                               "--output", f"s3://{fleet.bucket}/outputs/", *extra])


def cancel_order_exists(s3, bucket: str, batch_id: str) -> bool:
    found = s3.list_objects_v2(Bucket=bucket, Prefix=batch_cancel_key("outputs/", batch_id))
    return found.get("KeyCount", 0) > 0


def test_a_job_id_outside_the_batch_is_refused_and_nothing_is_written(fleet, s3):
    jobs = enqueue_batch(fleet, s3, 3)
    batch = jobs[0].batch_id

    refused = cancel(fleet, batch, "--job-id", jobs[0].job_id, "--job-id", "j-not-mine")

    assert refused.exit_code == 2, refused.output
    assert "--job-id j-not-mine: not a job of batch" in refused.stderr
    assert "nothing was cancelled" in refused.stderr and "will end" not in refused.output
    assert not cancel_order_exists(s3, fleet.bucket, batch)


def test_job_ids_of_the_batch_are_cancelled(fleet, s3):
    jobs = enqueue_batch(fleet, s3, 3)
    batch = jobs[0].batch_id

    named = cancel(fleet, batch, "--job-id", jobs[1].job_id)

    assert named.exit_code == 0, named.output
    assert f"batch {batch}: 1 job(s) not yet started will end as cancelled" in named.stdout
    assert cancel_order_exists(s3, fleet.bucket, batch)


def test_a_batch_without_a_jobs_file_takes_ids_unchecked(fleet, s3):
    jobs = enqueue_batch(fleet, s3, 2)
    batch = jobs[0].batch_id
    s3.delete_object(Bucket=fleet.bucket, Key=batch_jobs_key("outputs/", batch))

    unchecked = cancel(fleet, batch, "--job-id", "j-from-elsewhere")

    assert unchecked.exit_code == 0, unchecked.output
    assert cancel_order_exists(s3, fleet.bucket, batch)


def test_dry_run_writes_nothing_and_json_says_what_was_cancelled(fleet, s3):
    jobs = enqueue_batch(fleet, s3, 3)
    batch = jobs[0].batch_id

    dry = cancel(fleet, batch, "--dry-run")
    written_after_dry_run = cancel_order_exists(s3, fleet.bucket, batch)
    done = cancel(fleet, batch, "--job-id", jobs[2].job_id, "--json")

    assert dry.exit_code == 0, dry.output
    assert "every job not yet started would end (dry run: nothing written)" in dry.stdout
    assert not written_after_dry_run
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "batch_id": batch, "dry_run": False, "ended_already": False, "finished": 0,
        "total": 3, "cancelled": [jobs[2].job_id], "reason": "cancelled"}
    assert cancel_order_exists(s3, fleet.bucket, batch)
