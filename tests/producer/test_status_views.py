"""``status`` for programs (--json), without a batch id (recent batches, the queue), and
--watch stopping when a batch's remaining jobs can only be in the DLQ."""

from __future__ import annotations

import json
import threading
import time

from typer.testing import CliRunner

from producer.cli import app
from tests.support.batch_results import enqueue_batch, mark

runner = CliRunner()


def move_to_dlq(sqs, fleet, count: int) -> None:
    """Take ``count`` jobs off the queue and put them in the DLQ, as redrive would."""
    moved = 0
    while moved < count:
        got = sqs.receive_message(QueueUrl=fleet.queue_url, MaxNumberOfMessages=count - moved,
                                  WaitTimeSeconds=0).get("Messages", [])
        assert got, "the queue ran out before the DLQ got its messages"
        for message in got:
            sqs.send_message(QueueUrl=fleet.dlq_url, MessageBody=message["Body"])
            sqs.delete_message(QueueUrl=fleet.queue_url, ReceiptHandle=message["ReceiptHandle"])
            moved += 1


def clear_queue(sqs, fleet) -> None:
    """Delete what is left on the queue, as workers do with the jobs they finish."""
    while got := sqs.receive_message(QueueUrl=fleet.queue_url, MaxNumberOfMessages=10,
                                     WaitTimeSeconds=0).get("Messages", []):
        for message in got:
            sqs.delete_message(QueueUrl=fleet.queue_url, ReceiptHandle=message["ReceiptHandle"])


def test_json_has_queue_dlq_counts_rate_eta_and_completeness(fleet, s3, sqs):
    jobs = enqueue_batch(fleet, s3, 4)
    mark(s3, jobs[0], "done")
    mark(s3, jobs[1], "failed")
    sqs.send_message(QueueUrl=fleet.dlq_url, MessageBody="poison")

    result = runner.invoke(app, ["status", "--batch-id", jobs[0].batch_id, "--output",
                                 f"s3://{fleet.bucket}/outputs/", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["queue"] == {"url": fleet.queue_url, "visible": 4, "in_flight": 0,
                               "delayed": 0, "outstanding": 4}
    assert report["dlq"] == {"url": fleet.dlq_url, "visible": 1, "in_flight": 0}
    batch = report["batch"]
    assert (batch["done"], batch["failed"], batch["total"], batch["finished"]) == (1, 1, 4, 2)
    assert batch["complete"] is False and batch["has_manifest"] is True
    assert batch["rate_jobs_per_second"] > 0 and batch["eta_seconds"] > 0
    assert batch["output"] == f"s3://{fleet.bucket}/outputs/"
    assert report["batches"] is None and report["exit_code"] == 0

    for job in jobs[2:]:
        mark(s3, job, "done")
    finished = json.loads(runner.invoke(app, [
        "status", "--batch-id", jobs[0].batch_id, "--output", f"s3://{fleet.bucket}/outputs/",
        "--json", "--failures"]).stdout)
    assert finished["batch"]["complete"] is True and finished["batch"]["eta_seconds"] == 0
    assert finished["failures"] == []  # the failed job wrote no record in this test


def test_without_a_batch_id_the_recent_batches_are_listed_newest_first(fleet, s3):
    first = enqueue_batch(fleet, s3, 2)
    time.sleep(0.05)
    second = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "tiny",
                                 "-p", "another prompt"])
    assert second.exit_code == 0, second.output
    second_id = second.stdout.split()[1].rstrip(":")
    mark(s3, first[0], "done")
    output = ["--output", f"s3://{fleet.bucket}/outputs/"]

    listed = runner.invoke(app, ["status", *output])
    newest = runner.invoke(app, ["status", *output, "--limit", "1", "--json"])

    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(f"queue {fleet.queue_url}: visible 4")
    header = lines.index(f"batches under s3://{fleet.bucket}/outputs/, newest first:")
    assert f"batch {second_id}: done 0, failed 0, total 2" in lines[header + 1]
    # Each batch says what it ran: source, model and prompt.
    assert lines[header + 2].strip() == (f"source s3://{fleet.bucket}/in/; model tiny; "
                                         "prompt 'another prompt'")
    assert f"batch {first[0].batch_id}: done 1, failed 0, total 2" in lines[header + 3]
    assert lines[header + 4].strip() == f"source s3://{fleet.bucket}/in/; model tiny; prompt 'p'"
    assert lines[header + 1].lstrip().startswith("20")  # its creation time
    batches = json.loads(newest.stdout)["batches"]
    assert [b["batch_id"] for b in batches] == [second_id]
    assert (batches[0]["models"], batches[0]["prompts"]) == (["tiny"], ["another prompt"])


def test_without_batches_or_an_output_prefix_it_says_what_to_pass(fleet, s3):
    empty = runner.invoke(app, ["status", "--output", f"s3://{fleet.bucket}/nothing/"])
    queue_only = runner.invoke(app, ["status"])

    assert empty.exit_code == 0, empty.output
    assert f"no batches under s3://{fleet.bucket}/nothing/" in empty.stdout
    assert queue_only.exit_code == 0, queue_only.output
    assert "recent batches: pass --output s3://bucket/prefix/ or set IMG2IMG_BUCKET" in (
        queue_only.stdout)


def test_watch_stops_when_the_unfinished_jobs_can_only_be_in_the_dlq(fleet, s3, sqs):
    jobs = enqueue_batch(fleet, s3, 3)
    mark(s3, jobs[0], "done")
    move_to_dlq(sqs, fleet, 2)
    clear_queue(sqs, fleet)  # the finished job's message
    started = time.monotonic()

    result = runner.invoke(app, ["status", "--batch-id", jobs[0].batch_id, "--output",
                                 f"s3://{fleet.bucket}/outputs/", "--watch",
                                 "--interval", "0.1", "--dlq-grace", "0.5", "--timeout", "60"])

    assert result.exit_code == 1, result.output
    assert 0.5 <= time.monotonic() - started < 30
    assert "done 1, failed 0, total 3" in result.stdout
    assert "2 job(s) unfinished, nothing is left on the queue and the DLQ holds 2" in (
        result.stderr)
    assert "img2img-producer redrive" in result.stderr and "gave up" not in result.stderr


def test_watch_keeps_waiting_while_jobs_are_still_on_the_queue(fleet, s3, sqs):
    jobs = enqueue_batch(fleet, s3, 3)
    move_to_dlq(sqs, fleet, 1)  # one in the DLQ, two still visible on the queue

    result = runner.invoke(app, ["status", "--batch-id", jobs[0].batch_id, "--output",
                                 f"s3://{fleet.bucket}/outputs/", "--watch", "--json",
                                 "--interval", "0.1", "--dlq-grace", "0", "--timeout", "0.6"])

    assert result.exit_code == 1, result.output
    assert "gave up after 0.6 s" in result.stderr
    assert json.loads(result.stdout)["watch"] == {"stopped": "timeout"}


def test_watch_without_a_batch_follows_the_queue_until_it_drains(fleet, s3, sqs):
    enqueue_batch(fleet, s3, 5)

    def consume() -> None:
        for _ in range(5):
            time.sleep(0.15)
            (message,) = sqs.receive_message(QueueUrl=fleet.queue_url, MaxNumberOfMessages=1,
                                             WaitTimeSeconds=0)["Messages"]
            sqs.delete_message(QueueUrl=fleet.queue_url, ReceiptHandle=message["ReceiptHandle"])

    worker = threading.Thread(target=consume)
    worker.start()
    drained = runner.invoke(app, ["status", "--watch", "--interval", "0.1", "--json",
                                  "--timeout", "60"])
    worker.join()
    sqs.send_message(QueueUrl=fleet.dlq_url, MessageBody="poison")
    with_dlq = runner.invoke(app, ["status", "--watch", "--interval", "0.1"])

    assert drained.exit_code == 0, drained.output
    report = json.loads(drained.stdout)
    assert report["queue"]["outstanding"] == 0 and report["watch"] == {"stopped": "drained"}
    assert with_dlq.exit_code == 1, with_dlq.output
    assert "visible 0, in flight 0, delayed 0" in with_dlq.stdout
    assert "the queue is drained but the DLQ holds 1 message(s)" in with_dlq.stderr
