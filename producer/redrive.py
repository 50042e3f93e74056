"""Moving messages from the dead-letter queue back to the job queue.

By hand (the default): receive from the DLQ, send to the queue, and delete from the
DLQ only what was sent, so none is lost. The move is bounded and moves each message at
most once, even while workers run and messages bounce:
- at most ``max_messages`` (default: the DLQ's depth when the run starts), and at most
  ``timeout`` seconds;
- a message this run moved that comes back to the DLQ meanwhile (SQS keeps its message
  id) stays there;
- bodies that are not jobs (``contract.bodies``) stay in the DLQ, and the report says
  why each is not a job, for a person to look at.
Messages left in the DLQ are made visible again when the run ends.

``use_move_task``: SQS's own StartMessageMoveTask instead: fast and server-side, but it
moves everything, non-job bodies included.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from common.aws_errors import describe
from contract.bodies import BodyKind, read_body
from contract.errors import InvalidJob
from producer.queues import dlq_arn_of, queue_arn, queue_counts, url_of_arn
from producer.sending import MAX_BATCH_ENTRIES, BatchSender, Outgoing

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
RECEIVE_WAIT_S = 1  # a short long-poll: asks every SQS server, returns when empty
# Received messages stay invisible for the run plus this margin, so one this run keeps
# in the DLQ is not received again by the same run.
VISIBILITY_MARGIN_S = 60
MAX_VISIBILITY_S = 12 * 60 * 60
REASONS_SHOWN = 20


@dataclass
class RedriveReport:
    dlq_url: str
    method: str  # "move-task", "receive-send-delete" or "dry-run"
    moved: int = 0  # for a move task: the DLQ depth when it started (it runs in SQS)
    failed: int = 0  # sends that failed; those messages stay in the DLQ
    not_jobs: int = 0  # bodies that are not jobs: left in the DLQ
    bounced: int = 0  # moved by this run and back in the DLQ already: left there
    stopped: str = ""  # why the run ended: "empty", "all" (at the start), "limit", "time"
    reasons: list[str] = field(default_factory=list)  # why bodies were left, first few
    task_handle: str | None = None


def find_dlq(sqs: Any, queue_url: str) -> tuple[str, str]:
    """(DLQ ARN, DLQ URL) from the queue's RedrivePolicy."""
    arn = dlq_arn_of(sqs, queue_url)
    if arn is None:
        raise InvalidJob(f"queue {queue_url} has no RedrivePolicy, so no dead-letter queue")
    return arn, url_of_arn(sqs, arn)


def start_move_task(probe: Any, dlq_arn: str, destination_arn: str) -> str:
    """Start SQS's move task; InvalidJob where the service cannot do it."""
    try:
        return probe.start_message_move_task(SourceArn=dlq_arn,
                                             DestinationArn=destination_arn)["TaskHandle"]
    except (ClientError, BotoCoreError) as exc:
        raise InvalidJob(f"StartMessageMoveTask is not available here ({describe(exc)}); run "
                         "redrive without --move-task to move messages by hand") from None


def redrive(sqs: Any, queue_url: str, *, max_messages: int | None = None,
            timeout: float = DEFAULT_TIMEOUT_S, use_move_task: bool = False,
            probe: Any | None = None, dry_run: bool = False,
            clock: Callable[[], float] = time.monotonic) -> RedriveReport:
    """Move DLQ messages back to ``queue_url`` (see the module docstring); with
    ``dry_run``, only count what the DLQ holds (``moved``: what would be looked at)."""
    dlq_arn, dlq_url = find_dlq(sqs, queue_url)
    if dry_run:
        return RedriveReport(dlq_url=dlq_url, method="dry-run",
                             moved=queue_counts(sqs, dlq_url).visible)
    if use_move_task:
        waiting = queue_counts(sqs, dlq_url).visible
        handle = start_move_task(probe or sqs, dlq_arn, queue_arn(sqs, queue_url))
        return RedriveReport(dlq_url=dlq_url, method="move-task", moved=waiting,
                             task_handle=handle)
    if max_messages is not None:
        return _move_by_hand(sqs, queue_url, dlq_url, limit=max_messages, timeout=timeout,
                             clock=clock)
    report = _move_by_hand(sqs, queue_url, dlq_url, limit=queue_counts(sqs, dlq_url).visible,
                           timeout=timeout, clock=clock)
    if report.stopped == "limit":
        report.stopped = "all"  # every message that was there at the start was handled
    return report


def _move_by_hand(sqs: Any, queue_url: str, dlq_url: str, *, limit: int, timeout: float,
                  clock: Callable[[], float]) -> RedriveReport:
    report = RedriveReport(dlq_url=dlq_url, method="receive-send-delete")
    deadline = clock() + timeout
    visibility = int(min(MAX_VISIBILITY_S, timeout + VISIBILITY_MARGIN_S))
    sender = BatchSender(sqs, queue_url, concurrency=1)
    created: set[str] = set()  # message ids this run created on the queue
    kept: list[str] = []  # receipts of messages left in the DLQ
    try:
        while True:
            handled = report.moved + report.failed + report.not_jobs + report.bounced
            if handled >= limit:
                report.stopped = "limit"
                break
            if clock() >= deadline:
                report.stopped = "time"
                break
            messages = sqs.receive_message(
                QueueUrl=dlq_url, MaxNumberOfMessages=min(MAX_BATCH_ENTRIES, limit - handled),
                WaitTimeSeconds=RECEIVE_WAIT_S, VisibilityTimeout=visibility,
                MessageAttributeNames=["All"]).get("Messages", [])
            if not messages:
                report.stopped = "empty"
                break
            to_move = []
            for message in messages:
                reason = _why_not_moved(message, created)
                if reason is None:
                    to_move.append(message)
                    continue
                kept.append(message["ReceiptHandle"])
                if reason == "bounced":
                    report.bounced += 1
                else:
                    report.not_jobs += 1
                    if len(report.reasons) < REASONS_SHOWN:
                        report.reasons.append(f"{message['MessageId']}: {reason}")
            if to_move:
                _move(sqs, sender, dlq_url, to_move, report, created, kept)
    finally:
        _make_visible(sqs, dlq_url, kept)
    return report


def _why_not_moved(message: dict, created: set[str]) -> str | None:
    if message["MessageId"] in created:
        return "bounced"
    body = read_body(message.get("Body", ""))
    return body.reason if body.kind is BodyKind.NOT_A_JOB else None


def _move(sqs: Any, sender: BatchSender, dlq_url: str, messages: list[dict],
          report: RedriveReport, created: set[str], kept: list[str]) -> None:
    by_id = {f"m{i}": m for i, m in enumerate(messages)}
    sent = sender.send_group([Outgoing(i, m["Body"], m.get("MessageAttributes"))
                              for i, m in by_id.items()])
    failed = {f.id for f in sent.failed}
    report.failed += len(failed)
    kept.extend(by_id[i]["ReceiptHandle"] for i in failed)
    created.update(sent.message_ids.values())
    done = [{"Id": i, "ReceiptHandle": m["ReceiptHandle"]}
            for i, m in by_id.items() if i not in failed]
    if done:
        deleted = sqs.delete_message_batch(QueueUrl=dlq_url, Entries=done)
        for miss in deleted.get("Failed", []):  # sent twice is better than lost
            log.warning("could not delete %s from the DLQ: %s", miss["Id"],
                        miss.get("Message"))
    report.moved += len(done)


def _make_visible(sqs: Any, dlq_url: str, receipts: list[str]) -> None:
    """Messages this run left in the DLQ become visible again at once."""
    for start in range(0, len(receipts), MAX_BATCH_ENTRIES):
        chunk = receipts[start:start + MAX_BATCH_ENTRIES]
        try:
            sqs.change_message_visibility_batch(QueueUrl=dlq_url, Entries=[
                {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0}
                for i, r in enumerate(chunk)])
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not make %d DLQ messages visible again (they will be after "
                        "their visibility timeout): %s", len(chunk), exc)
