"""The fleet source in-process: its messages settled through a stub consumer, its S3 work
on a real moto S3, the pipeline over a stub engine. A message is settled once, after
all of its jobs ended; the same job twice runs once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from contract.errors import StorageUnavailable
from tests.support.images import solid_png
from tests.support.s3_events import event, events
from tests.support.stub_engine import StubEngine
from worker.fleet.batch_progress import BatchProgress
from worker.fleet.cancels import CancelWatch
from worker.fleet.consumer import Delivery
from worker.fleet.events import Notifier
from worker.fleet.fleet_jobs import FleetJob
from worker.fleet.fleet_source import FleetSource
from worker.fleet.lifecycle import JobLifecycle
from worker.fleet.sqs_queue import ReceivedMessage
from worker.fleet.storage import S3Storage
from worker.images import PixelBudget
from worker.job_pipeline import JobPipeline
from worker.settings import WorkerSettings

FAST_EVENTS = {"event_steps": 4, "event_strength": 0.5, "event_max_side": 64}


@dataclass
class StubConsumer:
    """Records how each delivery was settled; settles each one once, like the real one."""

    acked: list[str] = field(default_factory=list)
    retried: list[tuple[str, int]] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    settled: threading.Condition = field(default_factory=threading.Condition)

    def ack(self, delivery: Delivery) -> None:
        with self.settled:
            assert delivery.message_id not in self.acked, "acknowledged twice"
            self.acked.append(delivery.message_id)
            self.settled.notify_all()

    def retry(self, delivery: Delivery, delay: int) -> bool:
        with self.settled:
            self.retried.append((delivery.message_id, delay))
            self.settled.notify_all()
        return True

    def mark_started(self, delivery: Delivery) -> None:
        self.started.append(delivery.message_id)

    def wait(self, count: int, timeout: float = 15.0) -> None:
        with self.settled:
            assert self.settled.wait_for(
                lambda: len(self.acked) + len(self.retried) >= count, timeout), (
                f"settled {self.acked} {self.retried}")


class Rig:
    """A fleet source, its pipeline and engine loop: what ``service.Worker`` wires, minus
    SQS (messages are handed in) and the threads the test does not need."""

    def __init__(self, bucket: str, s3, tmp: Path, engine: StubEngine) -> None:
        settings = WorkerSettings(
            allowed_models=["tiny"], allowed_inputs=[], allowed_outputs=[],
            model_cache=tmp / "models", health_file=tmp / "health", visibility_timeout=30,
            release_backoff_seconds=7, **FAST_EVENTS)
        storage = S3Storage(s3)
        self.bucket, self.s3, self.engine = bucket, s3, engine
        self.consumer = StubConsumer()
        notifier = Notifier(topic_arn=None, sns_client=None, webhook_url=None,
                            webhook_secret=None)
        lifecycle = JobLifecycle(notifier, BatchProgress(storage, "rig"),
                                 CancelWatch(storage, 5.0), worker_id="rig")
        self.source = FleetSource(settings, engine, storage, self.consumer,  # type: ignore[arg-type]
                                  lifecycle, worker_id="rig", pixels=PixelBudget(10**8))
        self.pipeline: JobPipeline[FleetJob] = JobPipeline(
            engine, self.source, max_batch_size=4, io_threads=4, prefetch_jobs=8,  # type: ignore[arg-type]
            beat_every=0.2)
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self.pipeline.run,
                                      kwargs={"until": self._stop.is_set}, daemon=True)
        self._loop.start()
        self._count = 0

    def deliver(self, body: str, message_id: str | None = None) -> Delivery:
        """Take one message as the receiver does: its jobs go to the pipeline
        (``message_id``: a redelivery of that message)."""
        self._count += 1
        message = ReceivedMessage(message_id=message_id or f"m{self._count}",
                                  receipt_handle="r", body=body,
                                  receive_count=2 if message_id else 1,
                                  received_at=time.monotonic())
        delivery = Delivery(message, queue=None)  # type: ignore[arg-type]
        intake = self.source.take(delivery)
        for chore in intake.chores:
            self.pipeline.run_io(chore)
        for job in intake.jobs:
            self.pipeline.submit(job)
        return delivery

    def recheck(self) -> None:
        """The waiter loop's turn."""
        for job in self.source.recheck_waiting():
            self.pipeline.submit(job)

    def images_generated(self) -> int:
        return sum(len(names) for _, names in self.engine.batches)

    def record(self, key_prefix: str) -> dict:
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=key_prefix)
        keys = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".json")]
        assert len(keys) == 1, keys
        return json.loads(self.s3.get_object(Bucket=self.bucket, Key=keys[0])["Body"].read())

    def close(self) -> None:
        self._stop.set()
        self.pipeline.wake()
        self._loop.join(timeout=5)
        self.pipeline.shutdown()


@pytest.fixture
def rig(fleet, s3, tmp_path) -> Iterator[Rig]:
    made = Rig(fleet.bucket, s3, tmp_path, StubEngine())
    yield made
    made.close()


def upload(rig: Rig, *keys: str) -> None:
    for i, key in enumerate(keys):
        rig.s3.put_object(Bucket=rig.bucket, Key=key, Body=solid_png((64, 64), color=i * 40))


def test_a_message_of_several_jobs_is_settled_once_after_the_last(rig):
    upload(rig, "up/a.png", "up/b.png")
    rig.deliver(events(event(rig.bucket, "up/a.png"), event(rig.bucket, "up/b.png"),
                       event(rig.bucket, "up/missing.png")))
    rig.consumer.wait(1)
    time.sleep(0.3)  # a second settlement would show up here

    assert rig.consumer.acked == ["m1"] and not rig.consumer.retried
    assert rig.images_generated() == 2
    assert rig.record("outputs/a.")["status"] == "done"
    assert rig.record("outputs/missing.")["error"]["type"] == "InputNotFound"


def test_a_transient_failure_hands_the_message_back_with_a_backoff(rig):
    upload(rig, "up/flaky.png")
    rig.engine.fail = lambda key, items: StorageUnavailable("S3 throttled")
    rig.deliver(events(event(rig.bucket, "up/flaky.png")))
    rig.consumer.wait(1)

    assert not rig.consumer.acked
    [(message_id, delay)] = rig.consumer.retried
    assert message_id == "m1" and 5 <= delay <= 9  # 7 s, jittered by 20%
    # Its claim was dropped, so another delivery can run it at once.
    assert not rig.s3.list_objects_v2(Bucket=rig.bucket, Prefix="outputs/").get("Contents")


def test_one_key_listed_many_times_in_one_event_runs_once(rig):
    upload(rig, "up/dup.png")
    rig.deliver(events(*[event(rig.bucket, "up/dup.png")] * 50))
    rig.consumer.wait(1)

    assert rig.consumer.acked == ["m1"]
    assert rig.images_generated() == 1
    assert rig.record("outputs/dup.")["status"] == "done"


def test_the_same_job_in_two_messages_of_one_receive_runs_once(rig):
    upload(rig, "up/twin.png")
    rig.engine.seconds = 0.5  # the first is still running when the second arrives
    rig.deliver(events(event(rig.bucket, "up/twin.png")))
    rig.deliver(events(event(rig.bucket, "up/twin.png")))
    rig.consumer.wait(1)
    assert rig.consumer.acked == ["m1"]
    assert rig.source.holding() == 1  # the second waits for the first's outcome

    rig.recheck()
    rig.consumer.wait(2)
    assert rig.consumer.acked == ["m1", "m2"]
    assert rig.images_generated() == 1
    assert rig.source.summary.duplicates == 1


# -- a job enqueued in two batches (a twin) -------------------------------------------------

def _twin_batches(rig: Rig, fleet) -> tuple[list, list]:
    """Batch res-1 holds three jobs, batch res-2 the first of them again (same input and
    parameters: the same job id and output). Both have manifests, as enqueue writes."""
    from contract.batches import BatchManifest
    from contract.locations import batch_manifest_key
    from tests.support.fleet import put_job

    first = [put_job(rig.s3, None, fleet, f"in/{name}.png", solid_png((64, 64), color=i * 50),
                     batch_id="res-1", send=False)
             for i, name in enumerate(("wide", "tall", "square"))]
    second = [put_job(rig.s3, None, fleet, "in/wide.png", batch_id="res-2", send=False)]
    assert second[0].job_id == first[0].job_id
    for batch in (first, second):
        manifest = BatchManifest(
            batch_id=batch[0].batch_id, total=len(batch), queue_url="q", source="s",
            output=f"s3://{fleet.bucket}/out/",
            shard_totals=BatchManifest.shard_totals_of(j.job_id for j in batch))
        rig.s3.put_object(Bucket=fleet.bucket, Key=batch_manifest_key("out/", manifest.batch_id),
                          Body=manifest.model_dump_json())
    return first, second


def _assert_both_batches_complete(rig: Rig, fleet, first: list) -> None:
    from contract.locations import S3Location
    from producer.batch_objects import finished_jobs
    from producer.status import batch_progress

    output = S3Location(bucket=fleet.bucket, key="out/")
    for batch_id, total in (("res-1", 3), ("res-2", 1)):
        progress = batch_progress(rig.s3, output, batch_id)
        assert (progress.done, progress.total, progress.complete) == (total, total, True)
        claim = json.loads(rig.s3.get_object(
            Bucket=fleet.bucket, Key=f"out/_batches/{batch_id}/complete.json")["Body"].read())
        assert claim["announced"] is True and claim["done"] == total, claim
    fetched = finished_jobs(rig.s3, output, "res-1")
    assert sorted(j.job_id for j in fetched) == sorted(j.job_id for j in first)
    assert all(j.output is not None and j.record is not None for j in fetched)
    assert rig.images_generated() == 3, "the twin ran once"


def test_a_twin_waiting_here_counts_in_its_own_batch_too(rig, fleet):
    first, second = _twin_batches(rig, fleet)
    rig.engine.seconds = 0.5  # the twin arrives while its first delivery runs
    for job in first:
        rig.deliver(job.to_json())
    rig.deliver(second[0].to_json())
    rig.consumer.wait(3)
    assert rig.source.holding() == 1
    rig.recheck()
    rig.consumer.wait(4)
    assert sorted(rig.consumer.acked) == ["m1", "m2", "m3", "m4"]
    _assert_both_batches_complete(rig, fleet, first)


def test_a_twin_that_finds_its_job_done_counts_in_its_own_batch_too(rig, fleet):
    first, second = _twin_batches(rig, fleet)
    rig.deliver(second[0].to_json())  # res-2 runs the shared job first
    rig.consumer.wait(1)
    for job in first:
        rig.deliver(job.to_json())
    rig.consumer.wait(4)
    assert sorted(rig.consumer.acked) == ["m1", "m2", "m3", "m4"]
    record = rig.record("out/wide.")
    assert record["batch_id"] == "res-2" and record["gpu_seconds"] is not None
    _assert_both_batches_complete(rig, fleet, first)


def test_a_job_not_yet_marked_keeps_its_message_and_its_redelivery_counts_it(rig, fleet):
    """The done record is written, the batch marker is not (S3 fails, as a crash would
    stop it): the message is handed back, and its redelivery marks and counts the job
    without running it again, so the batch still completes."""
    from contract.errors import StorageUnavailable

    first, _ = _twin_batches(rig, fleet)
    put = rig.source.storage.put
    failing = {"left": 1}

    def flaky_put(location, data, content_type):
        if "/_batches/" in location.key and failing["left"]:
            failing["left"] -= 1
            raise StorageUnavailable("S3 down while marking")
        return put(location, data, content_type)

    rig.source.storage.put = flaky_put  # type: ignore[method-assign]
    rig.deliver(first[0].to_json())
    rig.consumer.wait(1)
    assert rig.consumer.retried == [("m1", 0)] and not rig.consumer.acked
    for job in first[1:]:
        rig.deliver(job.to_json())
    rig.consumer.wait(3)
    rig.deliver(first[0].to_json(), message_id="m1")  # the redelivery
    rig.consumer.wait(4)
    assert sorted(rig.consumer.acked) == ["m1", "m2", "m3"]
    assert rig.images_generated() == 3, "not run again"
    claim = json.loads(rig.s3.get_object(
        Bucket=fleet.bucket, Key="out/_batches/res-1/complete.json")["Body"].read())
    assert claim["announced"] is True and claim["done"] == 3
