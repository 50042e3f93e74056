"""``img2img-producer status``: queue depth, batch counts from markers, --watch, --failures."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from typer.testing import CliRunner

from contract.locations import result_key
from contract.result import ErrorInfo, ResultRecord
from producer.cli import app
from producer.status import batch_progress
from tests.support.batch_results import enqueue_batch, mark

runner = CliRunner()


def test_status_counts_queue_dlq_and_batch_markers(fleet, s3, sqs):
    jobs = enqueue_batch(fleet, s3, 6)
    for job in jobs[:3]:
        mark(s3, job, "done")
    mark(s3, jobs[3], "failed")
    sqs.send_message(QueueUrl=fleet.dlq_url, MessageBody="poison")
    sqs.receive_message(QueueUrl=fleet.queue_url, MaxNumberOfMessages=2, WaitTimeSeconds=0,
                        VisibilityTimeout=60)
    batch = jobs[0].batch_id

    result = runner.invoke(app, ["status", "--batch-id", batch,
                                 "--output", f"s3://{fleet.bucket}/outputs/"])

    assert result.exit_code == 0, result.output
    assert "visible 4, in flight 2, delayed 0" in result.stdout
    assert f"dlq {fleet.dlq_url}: 1 messages" in result.stdout
    assert f"batch {batch}: done 3, failed 1, total 6, rate " in result.stdout
    assert "jobs/s, eta " in result.stdout


def test_batch_progress_counts_across_list_pages(fleet, s3):
    jobs = enqueue_batch(fleet, s3, 7)
    for job in jobs[:5]:
        mark(s3, job, "done")
    for job in jobs[5:]:
        mark(s3, job, "failed")
    from contract.locations import parse_s3_uri

    progress = batch_progress(s3, parse_s3_uri(f"s3://{fleet.bucket}/outputs/", prefix=True),
                              jobs[0].batch_id, page_size=2)

    assert (progress.done, progress.failed, progress.total) == (5, 2, 7)
    assert progress.complete and sorted(progress.failed_job_ids) == sorted(
        j.job_id for j in jobs[5:])
    assert progress.first_marker_at is not None


def test_a_finished_batchs_rate_is_counted_to_its_end_not_to_now(fleet, s3):
    jobs = enqueue_batch(fleet, s3, 2)
    for job in jobs:
        mark(s3, job, "done")
    from contract.locations import parse_s3_uri

    progress = batch_progress(s3, parse_s3_uri(f"s3://{fleet.bucket}/outputs/", prefix=True),
                              jobs[0].batch_id)
    assert progress.complete and progress.finished_at == progress.last_marker_at
    later = progress.finished_at + timedelta(hours=1)
    at_end = progress.rate(progress.finished_at)

    assert at_end is not None and progress.rate(later) == at_end
    assert progress.to_dict(later)["finished_at"] == progress.finished_at.isoformat()
    unfinished = batch_progress(s3, parse_s3_uri(f"s3://{fleet.bucket}/outputs/",
                                                 prefix=True), "b-none")
    assert unfinished.finished_at is None


def test_group_markers_count_each_of_their_jobs_once(fleet, s3):
    """Workers mark jobs ended together with one object naming them all; a job marked
    again by a redelivery counts once, and done wins over an earlier failed try."""
    from contract.locations import batch_marker_keys, parse_s3_uri

    jobs = enqueue_batch(fleet, s3, 5)
    for key in batch_marker_keys(jobs[0].output.key, jobs[0].batch_id,
                                 [j.job_id for j in jobs[:3]], "done"):
        s3.put_object(Bucket=fleet.bucket, Key=key, Body=b"")
    mark(s3, jobs[0], "done")  # the redelivery of one of them
    mark(s3, jobs[3], "failed")
    mark(s3, jobs[1], "failed")  # an earlier failed try of a job that then ran
    progress = batch_progress(s3, parse_s3_uri(f"s3://{fleet.bucket}/outputs/", prefix=True),
                              jobs[0].batch_id)
    assert (progress.done, progress.failed, progress.total) == (3, 1, 5)
    assert progress.failed_job_ids == [jobs[3].job_id] and not progress.complete


def test_watch_returns_when_every_job_is_done_or_failed(fleet, s3):
    jobs = enqueue_batch(fleet, s3, 4)
    mark(s3, jobs[0], "done")

    def finish_later() -> None:
        time.sleep(0.8)
        mark(s3, jobs[1], "done")
        mark(s3, jobs[2], "failed")
        time.sleep(0.5)
        mark(s3, jobs[3], "done")

    worker = threading.Thread(target=finish_later)
    started = time.monotonic()
    worker.start()
    result = runner.invoke(app, ["status", "--batch-id", jobs[0].batch_id, "--output",
                                 f"s3://{fleet.bucket}/outputs/", "--watch",
                                 "--interval", "0.1"])
    worker.join()

    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= 1.3  # it waited for the last marker
    assert "done 3, failed 1, total 4" in result.stdout and "finished" in result.stdout


def test_watch_gives_up_after_its_timeout(fleet, s3):
    jobs = enqueue_batch(fleet, s3, 2)
    mark(s3, jobs[0], "done")

    result = runner.invoke(app, ["status", "--batch-id", jobs[0].batch_id, "--output",
                                 f"s3://{fleet.bucket}/outputs/", "--watch",
                                 "--interval", "0.1", "--timeout", "0.5"])

    assert result.exit_code == 1, result.output
    assert "done 1, failed 0, total 2" in result.stdout and "gave up" in result.stderr


def test_a_watch_with_no_worker_says_the_jobs_wait_on_the_queue(fleet, s3):
    """Nothing in the DLQ: the timeout says what the queue shows, not a guess about it."""
    jobs = enqueue_batch(fleet, s3, 2)

    result = runner.invoke(app, ["status", "--batch-id", jobs[0].batch_id, "--output",
                                 f"s3://{fleet.bucket}/outputs/", "--watch",
                                 "--interval", "0.1", "--timeout", "0.3"])

    assert result.exit_code == 1, result.output
    assert "2 message(s) wait on the queue and none is in flight: no worker is taking " \
        "them" in result.stderr
    assert "DLQ" not in result.stderr


def test_an_unknown_batch_is_an_error_watched_or_not(fleet):
    for extra in ([], ["--watch"], ["--json"]):
        result = runner.invoke(app, ["status", "--batch-id", "b-nosuchbatch", "--output",
                                     f"s3://{fleet.bucket}/outputs/", *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert f"no batch b-nosuchbatch under s3://{fleet.bucket}/outputs/" in result.stderr
        assert not result.stdout


def test_a_batch_without_manifest_is_shown_but_cannot_be_watched(fleet, s3):
    s3.put_object(Bucket=fleet.bucket, Key="outputs/_batches/other/j1.done", Body=b"")

    shown = runner.invoke(app, ["status", "--batch-id", "other", "--output",
                                f"s3://{fleet.bucket}/outputs/"])
    watched = runner.invoke(app, ["status", "--batch-id", "other", "--output",
                                  f"s3://{fleet.bucket}/outputs/", "--watch"])

    assert shown.exit_code == 0, shown.output
    assert "batch other: done 1, failed 0, total unknown (no manifest)" in shown.stdout
    assert watched.exit_code == 2 and "no manifest for batch other" in watched.stderr


def test_failures_lists_the_failed_jobs_errors(fleet, s3):
    jobs = enqueue_batch(fleet, s3, 3)
    bad, good = jobs[0], jobs[1]
    mark(s3, bad, "failed")
    mark(s3, good, "done")
    record = ResultRecord(job_id=bad.job_id, batch_id=bad.batch_id, status="failed",
                          input=bad.input.uri, error=ErrorInfo(type="InvalidImage",
                                                               message="truncated PNG"))
    s3.put_object(Bucket=fleet.bucket, Key=result_key(bad.output.key), Body=record.to_json())
    done = ResultRecord(job_id=good.job_id, batch_id=good.batch_id, status="done",
                        input=good.input.uri, output=good.output.uri)
    s3.put_object(Bucket=fleet.bucket, Key=result_key(good.output.key), Body=done.to_json())

    result = runner.invoke(app, ["status", "--batch-id", bad.batch_id, "--output",
                                 f"s3://{fleet.bucket}/outputs/", "--failures"])

    assert result.exit_code == 0, result.output
    assert f"failed {bad.job_id} {bad.input.uri}: InvalidImage: truncated PNG" in result.stdout
    assert good.job_id not in result.stdout
