"""The job life cycle end to end: real worker processes, a moto S3/SQS/SNS over HTTP,
a real SNS -> SQS subscription, a real local webhook server.

Four shared runs keep this quick: two workers on batches whose events are watched
(done, failed, expired, refused callbacks, costs, exactly one batch.complete each, a
job enqueued in two batches);
one worker whose batch is cancelled half way and whose job runs over its timeout; one
worker between a steady high-priority queue and a normal one, with every event
endpoint down; a worker killed while it announces a batch, and the one after it.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from common.aws import client
from local_fleet.embedded_aws import create_fleet_resources
from producer.cli import app
from tests.support.batch_runs import (
    FAST,
    enqueue_folder,
    image_folder,
    new_fleet,
    result_records,
    runner,
)
from tests.support.fleet import WorkerProcess, put_job, queue_counts, worker_env
from tests.support.images import solid_png
from tests.support.local_http import Request
from tests.support.webhook import WebhookReceiver
from worker.fleet.events import EVENT_HEADER

pytestmark = pytest.mark.timeout(600)
PRICE = 3.6  # dollars per GPU-hour: a job's cost is its gpu seconds / 1000
TWINS = ("res-1", "res-2")  # res-2's one job is also res-1's first: a twin


def _inbox(sns: Any, sqs: Any, topic: str, name: str) -> str:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return url


def _drain_events(sqs: Any, url: str) -> list[dict]:
    events = []
    while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                     WaitTimeSeconds=1).get("Messages", []):
        for message in got:
            envelope = json.loads(message["Body"])
            events.append({**json.loads(envelope["Message"]),
                           "_attributes": envelope.get("MessageAttributes", {})})
    return events


# -- run 1: events, costs, deadlines, two workers ----------------------------------------

@pytest.fixture(scope="module")
def events_run(moto_endpoint: str, model_cache: Path, tmp_path_factory):
    resources, s3, sqs = new_fleet(moto_endpoint, "ev")
    sns = client("sns", endpoint_url=moto_endpoint)
    topic = sns.create_topic(Name=f"events-{resources.bucket}")["TopicArn"]
    inbox = _inbox(sns, sqs, topic, f"{resources.bucket}-inbox")
    webhook, callbacks = WebhookReceiver(), WebhookReceiver()
    tmp = tmp_path_factory.mktemp("events")
    enqueue_folder(resources, image_folder(tmp / "main", 5, corrupt=1), "main",
             "--callback-url", callbacks.url)
    enqueue_folder(resources, image_folder(tmp / "late", 2), "late", "--ttl", "1")
    _enqueue_twins(resources, s3, tmp)
    # A job from another producer (no manifest) asking for a metadata-address callback.
    refused = put_job(s3, sqs, resources, "in/refused.png", solid_png((64, 64)),
                      output_prefix="out/", batch_id="alone", max_side=64, send=False)
    body = json.loads(refused.to_json())
    body["callback_url"] = "http://169.254.169.254/latest/meta-data/"
    sqs.send_message(QueueUrl=resources.queue_url, MessageBody=json.dumps(body))
    time.sleep(1.5)  # the "late" batch's jobs expire before any worker starts
    workers = []
    for index in range(2):
        env = worker_env(resources, model_cache, tmp, worker_id=f"ev-{index}",
                         events_topic_arn=topic, webhook_url=webhook.url,
                         webhook_secret="s3cret", allowed_callbacks=callbacks.url,
                         callback_private_networks="127.0.0.0/8",
                         gpu_price_per_hour=PRICE, max_batch_size=2,
                         health_file=str(tmp / f"w{index}.health"))
        env["OMP_NUM_THREADS"] = "1"
        workers.append(WorkerProcess(env, "--exit-when-idle", "5"))
    codes = [w.wait(timeout=400) for w in workers]
    time.sleep(0.5)  # events are delivered in the background: let the last ones land
    return {"resources": resources, "s3": s3, "sqs": sqs, "codes": codes,
            "workers": workers, "events": _drain_events(sqs, inbox),
            "webhook": webhook, "callbacks": callbacks, "refused": refused,
            "records": result_records(s3, resources.bucket), "tmp": tmp}


def _enqueue_twins(resources, s3, tmp: Path) -> None:
    """Three images enqueued as res-1, then the first of them alone, with the same
    parameters, as res-2: the same job id, held by both batches."""
    for i, name in enumerate(("wide", "tall", "square")):
        s3.put_object(Bucket=resources.bucket, Key=f"in/twins/{name}.png",
                      Body=solid_png((64 + 16 * i, 48), color=40 * i))
    for batch_id, source in (("res-1", "in/twins/"), ("res-2", "in/twins/wide.png")):
        result = runner.invoke(app, ["enqueue", f"s3://{resources.bucket}/{source}",
                                     "--output", f"s3://{resources.bucket}/twins/",
                                     "--batch-id", batch_id, *FAST],
                               env=resources.environment())
        assert result.exit_code == 0, result.output


def test_every_job_end_is_one_event_with_filterable_attributes(events_run):
    assert events_run["codes"] == [0, 0]
    jobs = [e for e in events_run["events"]
            if e["type"].startswith("job.") and e["batch_id"] not in TWINS]
    by_type: dict[str, int] = {}
    for event in jobs:
        by_type[event["type"]] = by_type.get(event["type"], 0) + 1
        assert event["_attributes"]["type"]["Value"] == event["type"]
        assert event["_attributes"]["status"]["Value"] == event["status"]
        assert event["_attributes"]["batch_id"]["Value"] == event["batch_id"]
        assert {"job_id", "input", "output", "error", "model", "seconds", "gpu_seconds",
                "worker", "time"} <= set(event)
    # main: 5 done, 1 unreadable; late: 2 expired; alone: done (its callback refused).
    assert by_type == {"job.done": 6, "job.failed": 1, "job.expired": 2}
    assert len({e["job_id"] for e in jobs}) == len(jobs), "one event per job"


def test_each_batch_is_announced_exactly_once_with_its_counts(events_run):
    complete = [e for e in events_run["events"]
                if e["type"] == "batch.complete" and e["batch_id"] not in TWINS]
    by_batch = {e["batch_id"]: e for e in complete}
    # "alone" came from a producer that wrote no manifest: it has no total to complete.
    assert len(complete) == len(by_batch) == 2, complete
    assert (by_batch["main"]["done"], by_batch["main"]["failed"]) == (5, 1)
    assert by_batch["main"]["total"] == 6
    assert by_batch["late"]["expired"] == 2 and by_batch["late"]["done"] == 0
    assert by_batch["main"]["gpu_seconds"] > 0
    assert by_batch["main"]["cost_usd"] == pytest.approx(
        by_batch["main"]["gpu_seconds"] * PRICE / 3600, rel=1e-3)


def test_a_job_in_two_batches_runs_once_and_completes_both(events_run):
    """The twin counts as done in both batches; both are announced; fetch of each brings
    all its outputs."""
    twin_jobs = [e for e in events_run["events"]
                 if e["type"] == "job.done" and e["batch_id"] in TWINS]
    assert len(twin_jobs) == len({e["job_id"] for e in twin_jobs}) == 3, "the twin ran once"
    complete = {e["batch_id"]: e for e in events_run["events"]
                if e["type"] == "batch.complete" and e["batch_id"] in TWINS}
    assert set(complete) == set(TWINS), complete
    assert (complete["res-1"]["done"], complete["res-1"]["total"]) == (3, 3)
    assert (complete["res-2"]["done"], complete["res-2"]["total"]) == (1, 1)
    resources = events_run["resources"]
    output = f"s3://{resources.bucket}/twins/"
    for batch_id, outputs in (("res-1", 3), ("res-2", 1)):
        status = runner.invoke(app, ["status", "--batch-id", batch_id, "--output", output,
                                     "--json"], env=resources.environment())
        facts = json.loads(status.stdout)["batch"]
        assert (facts["done"], facts["complete"]) == (outputs, True), facts
        dest = events_run["tmp"] / f"fetched-{batch_id}"
        fetched = runner.invoke(app, ["fetch", str(dest), "--batch-id", batch_id,
                                      "--output", output], env=resources.environment())
        assert fetched.exit_code == 0, fetched.output
        assert len(list(dest.glob("*.png"))) == outputs, fetched.output


def test_the_webhook_gets_the_same_events_signed(events_run):
    import hashlib
    import hmac

    received = events_run["webhook"].received
    assert len(received) == len(events_run["events"])
    for headers, body in received:
        assert headers["X-Img2img-Signature"] == "sha256=" + hmac.new(
            b"s3cret", body, hashlib.sha256).hexdigest()


def test_callbacks_go_only_where_allowed(events_run):
    called = [json.loads(body) for _, body in events_run["callbacks"].received]
    assert sorted(e["type"] for e in called) == ["job.done"] * 5 + ["job.failed"]
    # A refused callback never fails a job: it runs, and the refusal is logged.
    job_id = events_run["refused"].job_id
    refused = next(r for r in events_run["records"] if r["job_id"] == job_id)
    assert refused["status"] == "done"
    refusals = [e for w in events_run["workers"] for e in w.logs()
                if e.get("job_id") == job_id and "refused" in e.get("message", "")]
    assert len(refusals) == 1 and "169.254.169.254" in refusals[0]["message"]


def test_records_carry_gpu_seconds_and_cost(events_run):
    done = [r for r in events_run["records"] if r["status"] == "done"]
    assert len(done) == 6  # main's five and "alone" (its callback refused, the job ran)
    for record in done:
        assert record["gpu_seconds"] > 0
        assert record["cost_usd"] == pytest.approx(record["gpu_seconds"] * PRICE / 3600,
                                                   rel=1e-3)
    expired = [r for r in events_run["records"] if r["status"] == "expired"]
    assert len(expired) == 2 and all(r["error"]["type"] == "Expired" for r in expired)


def test_status_shows_the_batch_totals(events_run):
    resources = events_run["resources"]
    result = runner.invoke(app, ["status", "--batch-id", "main", "--output",
                                 f"s3://{resources.bucket}/out/"],
                           env=resources.environment())
    assert result.exit_code == 0, result.output
    assert "done 5, failed 1" in result.stdout and "finished" in result.stdout
    assert "gpu " in result.stdout and "($" in result.stdout
    late = runner.invoke(app, ["status", "--batch-id", "late", "--output",
                               f"s3://{resources.bucket}/out/"], env=resources.environment())
    assert "expired 2" in late.stdout


# -- run 2: cancel half way, and a timeout ------------------------------------------------

@pytest.fixture(scope="module")
def cancel_run(moto_endpoint: str, model_cache: Path, tmp_path_factory):
    resources, s3, sqs = new_fleet(moto_endpoint, "cx")
    tmp = tmp_path_factory.mktemp("cancel")
    enqueue_folder(resources, image_folder(tmp / "many", 10), "many", "--steps", "40", "--strength",
             "1.0", "--max-side", "128")
    enqueue_folder(resources, image_folder(tmp / "slow", 1), "slow", "--steps", "200",
             "--strength", "1.0", "--max-side", "256", "--timeout", "1")
    env = worker_env(resources, model_cache, tmp, max_batch_size=2, prefetch_batches=1,
                     cancel_check_seconds=0.5)
    worker = WorkerProcess(env, "--exit-when-idle", "4")
    worker.wait_for(lambda e: e.get("status") == "done" and e.get("batch_id") == "many",
                    timeout=200)
    output = f"s3://{resources.bucket}/out/"
    first = runner.invoke(app, ["cancel", "--batch-id", "many", "--output", output,
                                "--reason", "wrong prompt"], env=resources.environment())
    again = runner.invoke(app, ["cancel", "--batch-id", "many", "--output", output],
                          env=resources.environment())
    code = worker.wait(timeout=400)
    after = runner.invoke(app, ["cancel", "--batch-id", "many", "--output", output],
                          env=resources.environment())
    return {"resources": resources, "s3": s3, "sqs": sqs, "code": code, "worker": worker,
            "first": first, "again": again, "after": after,
            "records": result_records(s3, resources.bucket)}


def test_a_cancelled_batch_ends_its_unstarted_jobs_as_cancelled(cancel_run):
    assert cancel_run["code"] == 0
    assert cancel_run["first"].exit_code == 0, cancel_run["first"].output
    assert "will end as cancelled" in cancel_run["first"].stdout
    assert cancel_run["again"].exit_code == 0  # idempotent
    many = [r for r in cancel_run["records"] if r["batch_id"] == "many"]
    statuses = sorted(r["status"] for r in many)
    assert len(many) == 10 and set(statuses) == {"done", "cancelled"}, statuses
    assert statuses.count("cancelled") >= 4, "the cancel came early in the batch"
    cancelled = [r for r in many if r["status"] == "cancelled"]
    assert all(r["output"] is None and "wrong prompt" in r["error"]["message"]
               for r in cancelled)
    s3, bucket = cancel_run["s3"], cancel_run["resources"].bucket
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]}
    assert not any(r["job_id"][:12] in k and k.endswith(".png") for r in cancelled
                   for k in keys), "a cancelled job has no output"
    assert "out/_batches/many/complete.json" in keys, "the batch still completes"
    assert "already ended" in cancel_run["after"].stdout  # finished: nothing changes
    resources = cancel_run["resources"]
    assert queue_counts(cancel_run["sqs"], resources.queue_url) == (0, 0)
    assert queue_counts(cancel_run["sqs"], resources.dlq_url) == (0, 0)


def test_a_generation_over_its_timeout_fails_and_is_not_retried(cancel_run):
    (slow,) = [r for r in cancel_run["records"] if r["batch_id"] == "slow"]
    assert slow["status"] == "failed" and slow["error"]["type"] == "Timeout"
    runs = [e for e in cancel_run["worker"].logs()
            if e.get("job_id") == slow["job_id"] and e.get("status") == "failed"]
    assert len(runs) == 1, "not retried"


# -- run 3: priority under a steady load, every event endpoint down -------------------------

@pytest.fixture(scope="module")
def priority_run(moto_endpoint: str, model_cache: Path, tmp_path_factory):
    resources, s3, sqs = new_fleet(moto_endpoint, "pr")
    high = create_fleet_resources(s3, sqs, endpoint_url=moto_endpoint,
                                  bucket=f"{resources.bucket}-hi",
                                  queue_name=f"{resources.queue_url.rsplit('/', 1)[1]}-hi",
                                  max_receive_count=2, visibility_timeout=30)
    tmp = tmp_path_factory.mktemp("priority")
    env = {"IMG2IMG_PRIORITY_QUEUE_URL": high.queue_url}
    enqueue_folder(resources, image_folder(tmp / "normal", 4), "normal", env=env)
    enqueue_folder(resources, image_folder(tmp / "urgent", 16), "urgent", "--priority", "high",
             env=env)
    down = WebhookReceiver(fail=10**6)
    worker = WorkerProcess(
        worker_env(resources, model_cache, tmp, max_batch_size=2, prefetch_batches=1,
                   priority_queue_url=high.queue_url,
                   events_topic_arn="arn:aws:sns:us-east-1:123456789012:no-such-topic",
                   webhook_url=down.url),
        "--exit-when-idle", "4")
    code = worker.wait(timeout=400)
    return {"resources": resources, "high": high, "s3": s3, "sqs": sqs, "code": code,
            "worker": worker, "records": result_records(s3, resources.bucket)}


def test_high_priority_goes_first_and_normal_jobs_still_get_through(priority_run):
    assert priority_run["code"] == 0
    done = sorted((r for r in priority_run["records"] if r["status"] == "done"),
                  key=lambda r: r["finished_at"])
    order = [r["batch_id"] for r in done]
    assert sorted(order) == ["normal"] * 4 + ["urgent"] * 16
    assert order[:4].count("urgent") >= 2, f"high priority first: {order}"
    # Without the fair share the four normal jobs would be the last four.
    first_normal = order.index("normal")
    assert first_normal < len(order) - 4, f"normal jobs must not wait for all urgent: {order}"


def test_event_outages_never_fail_or_repeat_a_job(priority_run):
    records = priority_run["records"]
    assert len(records) == 20 and all(r["status"] == "done" for r in records)
    logs = priority_run["worker"].logs()
    assert len([e for e in logs if e.get("status") == "done"]) == 20, "each ran once"
    assert any("could not deliver" in e.get("message", "") for e in logs)
    undelivered = sum(d.get("EventsUndelivered", 0) for d in priority_run["worker"].metrics())
    assert undelivered >= 20, "every lost event is counted"
    sqs, resources, high = priority_run["sqs"], priority_run["resources"], priority_run["high"]
    assert queue_counts(sqs, resources.queue_url) == (0, 0)
    assert queue_counts(sqs, high.queue_url) == (0, 0)


# -- run 4: the worker that ends a batch dies while announcing it ---------------------------

class _HeldHook(WebhookReceiver):
    """A webhook that holds every batch.complete request until ``release`` (a worker
    stuck delivering it); job events are answered at once."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self._release = threading.Event()

    def _respond(self, request: Request) -> tuple[int, bytes]:
        if request.headers.get(EVENT_HEADER) == "batch.complete" and not self._release.is_set():
            self.holding.set()
            self._release.wait(30)
            return 503, b""
        return super()._respond(request)

    def release(self) -> None:
        self._release.set()


@pytest.fixture(scope="module")
def killed_announcer_run(moto_endpoint: str, model_cache: Path, tmp_path_factory):
    resources, s3, sqs = new_fleet(moto_endpoint, "ka")
    tmp = tmp_path_factory.mktemp("killed")
    enqueue_folder(resources, image_folder(tmp / "one", 1), "one")
    hook = _HeldHook()
    env = worker_env(resources, model_cache, tmp, webhook_url=hook.url,
                     visibility_timeout=10)
    first = WorkerProcess(env)
    held = hook.holding.wait(240)
    first.signal(signal.SIGKILL)  # dies between claiming the batch and announcing it
    first.wait(timeout=30)
    claim = json.loads(s3.get_object(Bucket=resources.bucket,
                                     Key="out/_batches/one/complete.json")["Body"].read())
    hook.release()
    second = WorkerProcess(env, "--exit-when-idle", "15")  # the message is back within 10 s
    code = second.wait(timeout=240)
    return {"held": held, "claim": claim, "code": code, "hook": hook, "second": second,
            "after": json.loads(s3.get_object(Bucket=resources.bucket,
                                              Key="out/_batches/one/complete.json")[
                "Body"].read()),
            "records": result_records(s3, resources.bucket), "sqs": sqs, "resources": resources}


def test_a_batch_whose_announcer_died_is_announced_by_the_next_worker(killed_announcer_run):
    run = killed_announcer_run
    assert run["held"], "the first worker reached the batch's announcement"
    assert run["claim"]["announced"] is False, "claimed, not yet announced, when killed"
    assert run["code"] == 0, run["second"].summary()
    announced = [json.loads(body) for _, body in run["hook"].received
                 if json.loads(body)["type"] == "batch.complete"]
    assert len(announced) == 1 and announced[0]["done"] >= 1, announced
    assert run["after"]["announced"] is True
    (record,) = run["records"]
    assert record["status"] == "done"
    logs = run["second"].logs()
    assert not [e for e in logs if e.get("status") == "done"], "the job did not run again"
    assert any("announcing it again" in e.get("message", "") for e in logs)
    resources = run["resources"]
    assert queue_counts(run["sqs"], resources.queue_url) == (0, 0)
