"""``img2img-producer redrive``: DLQ messages back on the job queue, none lost."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from typer.testing import CliRunner

from common.aws import sqs_client
from contract import JobMessage, S3Location, validate_params
from producer.cli import app
from producer.redrive import redrive

runner = CliRunner()


def job_body(i: int) -> str:
    return JobMessage.create(
        input=S3Location(bucket="in-bucket", key=f"in/{i}.png"), input_etag=None,
        output_prefix=S3Location(bucket="in-bucket", key="out/"),
        params=validate_params(model="tiny", prompt="p"), batch_id="b").to_json()


def fill_dlq(sqs, dlq_url: str, n: int, make=job_body) -> set[str]:
    bodies = {make(i) for i in range(n)}
    items = sorted(bodies)
    for start in range(0, n, 10):
        sqs.send_message_batch(QueueUrl=dlq_url, Entries=[
            {"Id": str(i), "MessageBody": b} for i, b in enumerate(items[start:start + 10])])
    return bodies


def bodies_on(sqs, queue_url: str) -> list[str]:
    out = []
    while got := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                     WaitTimeSeconds=0, VisibilityTimeout=60
                                     ).get("Messages", []):
        out.extend(m["Body"] for m in got)
    return out


def counts(sqs, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(
        attrs["ApproximateNumberOfMessagesNotVisible"])


def test_redrive_moves_every_message_back_exactly_once(fleet, sqs):
    bodies = fill_dlq(sqs, fleet.dlq_url, 23)

    result = runner.invoke(app, ["redrive"])

    assert result.exit_code == 0, result.output
    assert f"moved 23 messages from {fleet.dlq_url}" in result.stdout
    assert "every message that was in the DLQ at the start was handled" in result.stdout
    moved = bodies_on(sqs, fleet.queue_url)
    assert sorted(moved) == sorted(bodies)
    assert counts(sqs, fleet.dlq_url) == (0, 0)


def test_redrive_max_moves_only_that_many(fleet, sqs):
    fill_dlq(sqs, fleet.dlq_url, 15)

    result = runner.invoke(app, ["redrive", "--max", "7", "--queue-url", fleet.queue_url])

    assert result.exit_code == 0, result.output
    assert "moved 7 messages" in result.stdout
    assert counts(sqs, fleet.queue_url)[0] == 7
    assert counts(sqs, fleet.dlq_url) == (8, 0)


def test_messages_whose_send_failed_stay_in_the_dlq(fleet, sqs):
    bodies = fill_dlq(sqs, fleet.dlq_url, 6)
    dropped: list[str] = []

    def build(params, context, **_):  # the main queue rejects two messages
        if params["QueueUrl"] == fleet.queue_url and not dropped:
            dropped.extend(e["MessageBody"] for e in params["Entries"][-2:])
            context["dropped"] = [e["Id"] for e in params["Entries"][-2:]]
            del params["Entries"][-2:]

    def after(parsed, context, **_):
        for entry_id in context.get("dropped", []):
            parsed.setdefault("Failed", []).append({
                "Id": entry_id, "SenderFault": True, "Code": "InvalidMessageContents",
                "Message": "injected"})

    sqs.meta.events.register("before-parameter-build.sqs.SendMessageBatch", build)
    sqs.meta.events.register("after-call.sqs.SendMessageBatch", after)

    probe = sqs_client(endpoint_url=fleet.endpoint_url, max_attempts=1)  # moto: no move task
    report = redrive(sqs, fleet.queue_url, probe=probe)

    assert (report.moved, report.failed, report.method) == (4, 2, "receive-send-delete")
    assert sorted(bodies_on(sqs, fleet.queue_url)) == sorted(bodies - set(dropped))
    assert counts(sqs, fleet.dlq_url) == (2, 0)  # not deleted, and visible again at once


def test_the_sqs_move_task_is_used_where_the_service_has_it(fleet, sqs):
    fill_dlq(sqs, fleet.dlq_url, 3)
    started: list[dict] = []
    probe = SimpleNamespace(start_message_move_task=lambda **kw: started.append(kw) or {
        "TaskHandle": "handle-1"})

    report = redrive(sqs, fleet.queue_url, probe=probe, use_move_task=True)

    assert (report.method, report.task_handle, report.moved) == ("move-task", "handle-1", 3)
    assert started[0]["SourceArn"].endswith("-dlq")
    assert started[0]["DestinationArn"].endswith(fleet.queue_url.rsplit("/", 1)[1])
    assert counts(sqs, fleet.dlq_url) == (3, 0)  # SQS moves them, not us


def test_bodies_that_are_not_jobs_stay_in_the_dlq_with_a_report(fleet, sqs):
    jobs = fill_dlq(sqs, fleet.dlq_url, 4)
    junk = ["this is not a job", "[1, 2]", '{"hello": "world"}', "[" * 5000 + "]" * 5000]
    for body in junk:
        sqs.send_message(QueueUrl=fleet.dlq_url, MessageBody=body)

    result = runner.invoke(app, ["redrive"])

    assert result.exit_code == 0, result.output
    assert "moved 4 messages" in result.stdout
    assert "4 bodies that are not jobs stay in the DLQ" in result.stderr
    assert "not JSON" in result.stderr and "nested too deeply" in result.stderr
    assert sorted(bodies_on(sqs, fleet.queue_url)) == sorted(jobs)
    assert sorted(bodies_on(sqs, fleet.dlq_url)) == sorted(junk)  # visible again at once


def test_a_message_that_bounces_back_is_moved_once_and_the_run_ends(fleet, sqs):
    """A worker that fails a job at once sends it back to the DLQ while redrive runs:
    redrive must neither move it again nor run forever."""
    fill_dlq(sqs, fleet.dlq_url, 3)
    moved_ids: list[str] = []

    def bounce(parsed, context, **_):  # a failing worker: received until redriven
        moved_ids.extend(ok["MessageId"] for ok in parsed.get("Successful", []))
        for _ in range(fleet.max_receive_count + 1):
            other.receive_message(QueueUrl=fleet.queue_url, MaxNumberOfMessages=10,
                                  VisibilityTimeout=0, WaitTimeSeconds=0)

    other = sqs_client(endpoint_url=fleet.endpoint_url)

    sqs.meta.events.register("after-call.sqs.SendMessageBatch", bounce)
    started = time.monotonic()
    report = redrive(sqs, fleet.queue_url, max_messages=50, timeout=60)
    assert report.moved == 3 and report.bounced == 3 and report.stopped == "empty"
    assert time.monotonic() - started < 30
    dlq = sqs.receive_message(QueueUrl=fleet.dlq_url, MaxNumberOfMessages=10,
                              WaitTimeSeconds=1).get("Messages", [])
    assert sorted(m["MessageId"] for m in dlq) == sorted(moved_ids)  # moved once, back


def test_redrive_stops_at_its_time_limit(fleet, sqs):
    fill_dlq(sqs, fleet.dlq_url, 15)
    ticks = iter([0.0, 0.0, 100.0])  # start, first check, then past the deadline
    report = redrive(sqs, fleet.queue_url, timeout=10, clock=lambda: next(ticks))
    assert report.stopped == "time" and 0 < report.moved <= 10  # one receive's worth
    assert counts(sqs, fleet.dlq_url) == (15 - report.moved, 0)


def test_dry_run_counts_and_json_reports_for_scripts(fleet, sqs):
    fill_dlq(sqs, fleet.dlq_url, 5)

    dry = runner.invoke(app, ["redrive", "--dry-run"])
    left = counts(sqs, fleet.dlq_url)
    moved = runner.invoke(app, ["redrive", "--json"])

    assert dry.exit_code == 0, dry.output
    assert f"dry run: {fleet.dlq_url} holds about 5 message(s)" in dry.stdout
    assert left == (5, 0)
    assert moved.exit_code == 0, moved.output
    [report] = json.loads(moved.stdout)
    assert report["queue_url"] == fleet.queue_url and report["dlq_url"] == fleet.dlq_url
    assert (report["method"], report["moved"], report["failed"]) == (
        "receive-send-delete", 5, 0)


def test_move_task_where_the_endpoint_has_none_is_one_line_without_html(fleet):
    result = runner.invoke(app, ["redrive", "--move-task"])

    assert result.exit_code == 2, result.output
    assert "StartMessageMoveTask is not available here" in result.stderr
    assert "<" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_one_of_each_is_counted_in_the_singular(fleet, sqs):
    fill_dlq(sqs, fleet.dlq_url, 1)
    sqs.send_message(QueueUrl=fleet.dlq_url, MessageBody="not a job")

    result = runner.invoke(app, ["redrive"])

    assert result.exit_code == 0, result.output
    assert "moved 1 message from" in result.stdout
    assert "1 body that is not a job stays in the DLQ" in result.stderr
