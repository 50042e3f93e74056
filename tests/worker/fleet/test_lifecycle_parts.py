"""The job life cycle's parts against real things: batch totals and the one
batch.complete on a moto S3, events through a real SNS -> SQS subscription and a real
local webhook server, callback checks, cancel orders."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time

import pytest

from common.aws import client
from contract.batches import BatchManifest, CancelOrder
from contract.locations import (
    S3Location,
    batch_cancel_key,
    batch_complete_key,
    batch_manifest_key,
)
from contract.result import ResultRecord
from tests.support.webhook import WebhookReceiver
from worker.fleet.batch_progress import BatchProgress, Ended
from worker.fleet.cancels import CancelWatch
from worker.fleet.events import SIGNATURE_HEADER, Notifier, job_event
from worker.fleet.lifecycle import JobLifecycle
from worker.fleet.storage import S3Storage

OUT = "out/"


def _manifest(s3, bucket: str, batch_id: str, job_ids: list[str]) -> None:
    manifest = BatchManifest(batch_id=batch_id, total=len(job_ids), queue_url="q",
                             source="s", output=f"s3://{bucket}/{OUT}",
                             shard_totals=BatchManifest.shard_totals_of(job_ids))
    s3.put_object(Bucket=bucket, Key=batch_manifest_key(OUT, batch_id),
                  Body=manifest.model_dump_json())


def _marker(s3, bucket: str, batch_id: str, job_id: str, status: str) -> None:
    s3.put_object(Bucket=bucket, Key=f"{OUT}_batches/{batch_id}/{job_id}.{status}", Body=b"")


def test_racing_workers_announce_a_batch_exactly_once(fleet, s3):
    """Eight threads (eight workers' I/O threads) end the last jobs of a batch at once:
    exactly one of them wins the batch, with the right totals."""
    job_ids = [f"job{i:04d}aaaa" for i in range(24)]
    _manifest(s3, fleet.bucket, "race", job_ids)
    output = S3Location(bucket=fleet.bucket, key=f"{OUT}x.png")
    won = []
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        progress = BatchProgress(S3Storage(s3), f"w{index}")
        start.wait()
        for job_id in job_ids[index::8]:
            _marker(s3, fleet.bucket, "race", job_id, "done")
            completed = progress.count(output, "race", job_id, "done", gpu_seconds=0.5,
                                       cost_usd=0.001)
            if completed is not None:
                won.append(completed)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1, won
    (completed,) = won
    assert completed.total == 24 and completed.counts.done == 24
    assert completed.counts.gpu_seconds == pytest.approx(12.0)
    assert completed.counts.cost_usd == pytest.approx(0.024)


def test_a_job_counted_twice_does_not_end_its_batch_early(fleet, s3):
    job_ids = ["aaaaaaaa0001", "bbbbbbbb0002"]
    _manifest(s3, fleet.bucket, "twice", job_ids)
    output = S3Location(bucket=fleet.bucket, key=f"{OUT}x.png")
    progress = BatchProgress(S3Storage(s3), "w")
    _marker(s3, fleet.bucket, "twice", job_ids[0], "done")
    for _ in range(2):  # a crash between the count and the message's delete
        assert progress.count(output, "twice", job_ids[0], "done") is None
    _marker(s3, fleet.bucket, "twice", job_ids[1], "failed")
    completed = progress.count(output, "twice", job_ids[1], "failed")
    assert completed is not None and completed.total == 2
    assert progress.count(output, "twice", job_ids[1], "failed") is None, "announced once"


def _claim_of(s3, bucket: str, batch_id: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=batch_complete_key(OUT, batch_id))
                      ["Body"].read())


def test_a_claim_its_worker_died_on_is_announced_by_the_redelivery(fleet, s3):
    """The worker that claimed the batch died before announcing it: the redelivery of
    the same message announces it; another message, or one after the announcement, not."""
    job_ids = ["aaaaaaaa0001"]
    _manifest(s3, fleet.bucket, "died", job_ids)
    output = S3Location(bucket=fleet.bucket, key=f"{OUT}x.png")
    _marker(s3, fleet.bucket, "died", job_ids[0], "done")
    first = BatchProgress(S3Storage(s3), "w1").count(output, "died", job_ids[0], "done",
                                                     message_id="m1")
    assert first is not None and _claim_of(s3, fleet.bucket, "died")["announced"] is False
    # ...w1 dies here. Another message of the same job (enqueued twice) does not take over:
    other = BatchProgress(S3Storage(s3), "w2")
    assert other.count(output, "died", job_ids[0], "done", message_id="m9") is None
    again = other.count(output, "died", job_ids[0], "done", message_id="m1")
    assert again is not None and again.counts.done >= 1
    assert _claim_of(s3, fleet.bucket, "died")["announced_by"] == "w2"
    other.announced(again)
    claim = _claim_of(s3, fleet.bucket, "died")
    assert claim["announced"] is True and claim["total"] == 1
    assert other.count(output, "died", job_ids[0], "done", message_id="m1") is None


def test_the_end_of_a_batch_waits_for_its_event_then_marks_it_announced(fleet, s3):
    """The last job's message is settled only after batch.complete was delivered."""
    _manifest(s3, fleet.bucket, "wait", ["aaaaaaaa0001"])
    _marker(s3, fleet.bucket, "wait", "aaaaaaaa0001", "done")
    hook = WebhookReceiver(fail=2)  # delivered on the third try
    notifier = Notifier(topic_arn=None, sns_client=None, webhook_url=hook.url,
                        webhook_secret=None, sleep_for=0)
    progress = BatchProgress(S3Storage(s3), "w")
    lifecycle = JobLifecycle(notifier, progress, CancelWatch(S3Storage(s3), max_age=5),
                             worker_id="w")
    completed = progress.count(S3Location(bucket=fleet.bucket, key=f"{OUT}x.png"), "wait",
                               "aaaaaaaa0001", "done", message_id="m1")
    assert completed is not None
    lifecycle.announce(completed)  # returns once delivered: no close() in between
    (_, body), = hook.received
    assert json.loads(body)["type"] == "batch.complete"
    assert _claim_of(s3, fleet.bucket, "wait")["announced"] is True
    notifier.close()


def test_a_batch_without_shard_totals_is_never_announced(fleet, s3):
    old = BatchManifest(batch_id="old", total=1, queue_url="q", source="s",
                        output=f"s3://{fleet.bucket}/{OUT}")
    s3.put_object(Bucket=fleet.bucket, Key=batch_manifest_key(OUT, "old"),
                  Body=old.model_dump_json())
    progress = BatchProgress(S3Storage(s3), "w")
    assert progress.count(S3Location(bucket=fleet.bucket, key=f"{OUT}x.png"), "old",
                          "aaaaaaaa0001", "done") is None


def test_cancel_orders_are_read_at_most_every_max_age(fleet, s3):
    now = [0.0]
    watch = CancelWatch(S3Storage(s3), max_age=5, clock=lambda: now[0])
    output = S3Location(bucket=fleet.bucket, key=f"{OUT}x.png")
    assert watch.lookup(output, "b1", "job1") is None
    s3.put_object(Bucket=fleet.bucket, Key=batch_cancel_key(OUT, "b1"),
                  Body=CancelOrder(job_ids=["job1"], reason="wrong prompt").model_dump_json())
    assert watch.lookup(output, "b1", "job1") is None, "read again only after max_age"
    now[0] = 5.0
    assert watch.lookup(output, "b1", "job1") == "wrong prompt"
    assert watch.known(output, "b1", "job2") is None


def _record() -> ResultRecord:
    return ResultRecord(job_id="job-123456", batch_id="b1", status="done", input="s3://a/b",
                        output="s3://a/c", gpu_seconds=1.5, cost_usd=0.0004, worker="w")


def test_events_reach_sns_subscribers_and_a_signed_retried_webhook(fleet, sqs):
    sns = client("sns", endpoint_url=fleet.endpoint_url)
    topic = sns.create_topic(Name="events")["TopicArn"]
    inbox = sqs.create_queue(QueueName=f"{fleet.bucket}-inbox")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn)
    hook = WebhookReceiver(fail=2)  # the first two tries fail: retried with backoff
    notifier = Notifier(topic_arn=topic, sns_client=lambda: sns, webhook_url=hook.url,
                        webhook_secret="s3cret", sleep_for=0)
    notifier.publish(job_event(_record(), output="s3://a/c"))
    notifier.close()
    (headers, body), = hook.received
    event = json.loads(body)
    assert event["type"] == "job.done" and event["gpu_seconds"] == 1.5
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected
    (message,) = sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=2)["Messages"]
    envelope = json.loads(message["Body"])
    assert json.loads(envelope["Message"])["job_id"] == "job-123456"
    assert envelope["MessageAttributes"]["type"]["Value"] == "job.done"
    assert envelope["MessageAttributes"]["batch_id"]["Value"] == "b1"
    assert (notifier.delivered, notifier.undelivered) == (2, 0)


def test_an_unreachable_endpoint_is_counted_not_waited_for(fleet):
    hook = WebhookReceiver(fail=100)
    notifier = Notifier(topic_arn="arn:aws:sns:us-east-1:123456789012:missing",
                        sns_client=lambda: client("sns", endpoint_url=fleet.endpoint_url,
                                                  max_attempts=1),
                        webhook_url=hook.url, webhook_secret=None, sleep_for=0)
    notifier.publish(job_event(_record(), output=None))
    notifier.close()
    assert (notifier.delivered, notifier.undelivered) == (0, 2)


def test_a_batch_run_without_a_gpu_price_reports_its_cost_as_null(fleet, s3):
    """Workers without IMG2IMG_GPU_PRICE_PER_HOUR record no cost: the batch's event and
    ``status --json`` say null (not priced), not 0.0 (free)."""
    from typer.testing import CliRunner

    from contract.job import GenerationParams, JobMessage
    from producer.cli import app
    from worker.fleet.fleet_jobs import FleetJob

    wires = [JobMessage.create(input=S3Location(bucket=fleet.bucket, key=f"in/{i}.png"),
                               input_etag=None, output_prefix=S3Location(
                                   bucket=fleet.bucket, key=OUT),
                               params=GenerationParams(model="tiny", prompt="p"),
                               batch_id="unpriced") for i in range(2)]
    _manifest(s3, fleet.bucket, "unpriced", [w.job_id for w in wires])
    hook = WebhookReceiver()
    notifier = Notifier(topic_arn=None, sns_client=None, webhook_url=hook.url,
                        webhook_secret=None, sleep_for=0)
    lifecycle = JobLifecycle(notifier, BatchProgress(S3Storage(s3), "w"),
                             CancelWatch(S3Storage(s3), max_age=5), worker_id="w")
    for wire in wires:
        job = FleetJob(job_id=wire.job_id, params=wire.params, source=wire.input.uri,
                       batch_id=wire.batch_id, wire=wire)
        job.timings["inference"] = 0.25
        record = job.done_record(wire.output.uri, "w")  # no price
        _marker(s3, fleet.bucket, "unpriced", wire.job_id, "done")
        assert lifecycle.ended(job, record, announce_job=False)
    notifier.close()
    status = CliRunner().invoke(app, ["status", "--batch-id", "unpriced", "--output",
                                      f"s3://{fleet.bucket}/{OUT}", "--json"])

    (_, body), = hook.received
    event = json.loads(body)
    assert event["type"] == "batch.complete" and event["gpu_seconds"] == pytest.approx(0.5)
    assert event["cost_usd"] is None
    assert status.exit_code == 0, status.output
    batch = json.loads(status.stdout)["batch"]
    assert batch["gpu_seconds"] == pytest.approx(0.5) and batch["cost_usd"] is None


class _CountingStorage(S3Storage):
    """A real S3Storage that counts its reads and conditional writes (and can slow reads)."""

    def __init__(self, s3, read_delay: float = 0.0) -> None:
        super().__init__(s3)
        self.reads = 0
        self.writes = 0
        self.read_delay = read_delay

    def read_json(self, location):
        self.reads += 1
        time.sleep(self.read_delay)
        return super().read_json(location)

    def replace(self, location, data, content_type, etag):
        self.writes += 1
        return super().replace(location, data, content_type, etag)


def test_jobs_ended_together_cost_one_counter_write_and_no_read(fleet, s3):
    """A worker counts the jobs it ended together with one write per counter, over the
    version it wrote last (no read); when another worker wrote since, it reads and
    counts again, losing nothing."""
    job_ids = [f"job{i:04d}bbbb" for i in range(12)]
    _manifest(s3, fleet.bucket, "group", job_ids)
    output = S3Location(bucket=fleet.bucket, key=f"{OUT}x.png")
    storage = _CountingStorage(s3)
    mine, other = BatchProgress(storage, "w1"), BatchProgress(S3Storage(s3), "w2")

    def ends(ids: list[str]) -> list[Ended]:
        return [Ended(output, "group", job_id, "done", gpu_seconds=1.0) for job_id in ids]

    assert mine.count_all(ends(job_ids[:4])) == []
    assert (storage.reads, storage.writes) == (2, 1)  # the manifest and the counter, once
    assert mine.count_all(ends(job_ids[4:8])) == []
    assert (storage.reads, storage.writes) == (2, 2), "no read: it wrote that version"
    assert other.count_all(ends(job_ids[8:10])) == []
    for job_id in job_ids:
        _marker(s3, fleet.bucket, "group", job_id, "done")
    (completed,) = mine.count_all(ends(job_ids[10:]))
    assert storage.writes == 4, "its remembered version was stale: read, then written"
    assert completed.counts.done == 12 and completed.counts.gpu_seconds == pytest.approx(12)


def test_a_stale_cancel_order_is_read_once_for_many_jobs(fleet, s3):
    """Jobs prepared together ask at the same moment: one read, the others answer from
    the last one meanwhile."""
    now = [0.0]
    storage = _CountingStorage(s3, read_delay=0.3)
    watch = CancelWatch(storage, max_age=5, clock=lambda: now[0])
    output = S3Location(bucket=fleet.bucket, key=f"{OUT}x.png")
    assert watch.lookup(output, "b2", "job1") is None and storage.reads == 1
    s3.put_object(Bucket=fleet.bucket, Key=batch_cancel_key(OUT, "b2"),
                  Body=CancelOrder(all_jobs=True, reason="stop").model_dump_json())
    now[0] = 6.0
    threads = [threading.Thread(target=watch.lookup, args=(output, "b2", f"job{i}"))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert storage.reads == 2
    assert watch.known(output, "b2", "job9") == "stop"
