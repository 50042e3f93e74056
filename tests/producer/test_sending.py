"""The SQS batch sender against moto, with partial failures injected through botocore's
event hooks: entries are dropped from the real request and reported as failed."""

from __future__ import annotations

from types import SimpleNamespace

from producer.sending import MAX_BATCH_BYTES, BatchSender, Outgoing, chunk


def inject_failures(sqs, *, count: int, code: str, sender_fault: bool, calls: int = 1) -> list:
    """For the first ``calls`` SendMessageBatch calls, keep the last ``count`` entries
    out of the request and report them as failed, as SQS does for a partial failure.
    When every entry is dropped no request is made (SQS rejects an empty batch)."""
    seen: list[list[str]] = []

    def build(params, context, **_):
        seen.append([e["Id"] for e in params["Entries"]])
        if len(seen) <= calls:
            context["dropped"] = [e["Id"] for e in params["Entries"][-count:]]
            del params["Entries"][-count:]

    def before(context, **_):
        if context.get("dropped") and not seen[-1][:-len(context["dropped"])]:
            return SimpleNamespace(status_code=200, headers={}), {"Successful": []}
        return None

    def after(parsed, context, **_):
        for entry_id in context.get("dropped", []):
            parsed.setdefault("Failed", []).append({
                "Id": entry_id, "SenderFault": sender_fault, "Code": code,
                "Message": "injected"})

    sqs.meta.events.register("before-parameter-build.sqs.SendMessageBatch", build)
    sqs.meta.events.register("before-call.sqs.SendMessageBatch", before)
    sqs.meta.events.register("after-call.sqs.SendMessageBatch", after)
    return seen


def bodies_on(sqs, queue_url: str) -> list[str]:
    out = []
    while got := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                     WaitTimeSeconds=0).get("Messages", []):
        out.extend(m["Body"] for m in got)
    return out


def messages(n: int) -> list[Outgoing]:
    return [Outgoing(f"job{i:03d}", f'{{"n": {i}}}') for i in range(n)]


def test_entries_that_failed_on_the_service_side_are_sent_again(fleet, sqs):
    seen = inject_failures(sqs, count=3, code="InternalError", sender_fault=False)
    sender = BatchSender(sqs, fleet.queue_url, concurrency=2, sleep=lambda s: None)

    report = sender.send_all(messages(10))

    assert report.sent == 10 and not report.failed and report.retried == 3
    assert seen[1] == ["job007", "job008", "job009"]  # only the failed entries again
    assert sorted(bodies_on(sqs, fleet.queue_url)) == sorted(m.body for m in messages(10))


def test_throttled_entries_are_retried_even_as_sender_faults(fleet, sqs):
    seen = inject_failures(sqs, count=2, code="RequestThrottled", sender_fault=True)
    sender = BatchSender(sqs, fleet.queue_url, sleep=lambda s: None)

    report = sender.send_all(messages(5))

    assert report.sent == 5 and report.calls == 2 and not report.failed
    assert seen[1] == ["job003", "job004"]
    assert len(bodies_on(sqs, fleet.queue_url)) == 5


def test_sender_faults_are_not_retried_and_are_reported(fleet, sqs):
    seen = inject_failures(sqs, count=2, code="InvalidParameterValue", sender_fault=True)
    sender = BatchSender(sqs, fleet.queue_url, sleep=lambda s: None)

    report = sender.send_all(messages(10))

    assert len(seen) == 1 and report.sent == 8
    assert sorted(f.id for f in report.failed) == ["job008", "job009"]
    assert report.failed[0].code == "InvalidParameterValue"
    assert len(bodies_on(sqs, fleet.queue_url)) == 8


def test_retries_are_bounded(fleet, sqs):
    seen = inject_failures(sqs, count=1, code="InternalError", sender_fault=False, calls=99)
    sleeps: list[float] = []
    sender = BatchSender(sqs, fleet.queue_url, max_attempts=3, sleep=sleeps.append)

    report = sender.send_all(messages(4))

    assert len(seen) == 3 and len(sleeps) == 2
    assert report.sent == 3 and [f.id for f in report.failed] == ["job003"]


def test_groups_respect_the_entry_and_size_limits():
    small = [Outgoing(str(i), "x") for i in range(23)]
    assert [len(g) for g in chunk(small)] == [10, 10, 3]
    big = [Outgoing(str(i), "y" * (MAX_BATCH_BYTES // 3)) for i in range(7)]
    groups = list(chunk(big))
    assert [len(g) for g in groups] == [3, 3, 1]
    assert all(sum(len(m.body) for m in g) <= MAX_BATCH_BYTES for g in groups)
