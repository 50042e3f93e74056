"""Moving messages from the dead-letter queue back to the job queue.

SQS's own StartMessageMoveTask is used where the service has it and no ``--max`` is
given. Otherwise messages are moved by hand: receive from the DLQ, send to the queue,
and delete from the DLQ only the messages whose send succeeded, so none is lost (a
message whose send failed becomes visible in the DLQ again after the visibility timeout).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from contract.errors import InvalidJob
from producer.queues import dlq_arn_of, queue_arn, queue_counts, url_of_arn
from producer.sending import MAX_BATCH_ENTRIES, BatchSender, Outgoing

log = logging.getLogger(__name__)

# Long enough to send and delete a received group before it would reappear in the DLQ.
RECEIVE_VISIBILITY_S = 120
RECEIVE_WAIT_S = 1  # a short long-poll: asks every SQS server, returns when empty


@dataclass
class RedriveReport:
    dlq_url: str
    method: str  # "move-task" or "receive-send-delete"
    moved: int = 0  # for a move task: the DLQ depth when it started (it runs in SQS)
    failed: int = 0  # sends that failed; those messages stay in the DLQ
    task_handle: str | None = None


def find_dlq(sqs: Any, queue_url: str) -> tuple[str, str]:
    """(DLQ ARN, DLQ URL) from the queue's RedrivePolicy."""
    arn = dlq_arn_of(sqs, queue_url)
    if arn is None:
        raise InvalidJob(f"queue {queue_url} has no RedrivePolicy, so no dead-letter queue")
    return arn, url_of_arn(sqs, arn)


def start_move_task(probe: Any, dlq_arn: str, destination_arn: str) -> str | None:
    """The task handle, or None where the service cannot do it (moto, no permission)."""
    try:
        return probe.start_message_move_task(SourceArn=dlq_arn,
                                             DestinationArn=destination_arn)["TaskHandle"]
    except (ClientError, BotoCoreError) as exc:
        # UnsupportedOperation, AccessDenied, moto's 500 "not implemented": move by hand.
        log.info("StartMessageMoveTask unavailable (%s); moving messages by hand", exc)
        return None


def redrive(sqs: Any, queue_url: str, *, max_messages: int | None = None,
            probe: Any | None = None) -> RedriveReport:
    """Move up to ``max_messages`` (default all) from the DLQ back to ``queue_url``.

    ``probe`` is the client that tries StartMessageMoveTask (one without retries saves
    time where the call is not supported); it defaults to ``sqs``.
    """
    dlq_arn, dlq_url = find_dlq(sqs, queue_url)
    if max_messages is None:
        waiting = queue_counts(sqs, dlq_url).visible
        handle = start_move_task(probe or sqs, dlq_arn, queue_arn(sqs, queue_url))
        if handle is not None:
            return RedriveReport(dlq_url=dlq_url, method="move-task", moved=waiting,
                                 task_handle=handle)
    report = RedriveReport(dlq_url=dlq_url, method="receive-send-delete")
    sender = BatchSender(sqs, queue_url, concurrency=1)
    while max_messages is None or report.moved < max_messages:
        want = MAX_BATCH_ENTRIES if max_messages is None else min(
            MAX_BATCH_ENTRIES, max_messages - report.moved)
        messages = sqs.receive_message(
            QueueUrl=dlq_url, MaxNumberOfMessages=want, WaitTimeSeconds=RECEIVE_WAIT_S,
            VisibilityTimeout=RECEIVE_VISIBILITY_S,
            MessageAttributeNames=["All"]).get("Messages", [])
        if not messages:
            break
        by_id = {f"m{i}": m for i, m in enumerate(messages)}
        sent = sender.send_group([Outgoing(i, m["Body"], m.get("MessageAttributes"))
                                  for i, m in by_id.items()])
        failed = {f.id for f in sent.failed}
        report.failed += len(failed)
        done = [{"Id": i, "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in by_id.items() if i not in failed]
        if done:
            deleted = sqs.delete_message_batch(QueueUrl=dlq_url, Entries=done)
            for miss in deleted.get("Failed", []):  # sent twice is better than lost
                log.warning("could not delete %s from the DLQ: %s", miss["Id"],
                            miss.get("Message"))
        report.moved += len(done)
        if failed and not done:
            break  # nothing gets through: stop rather than spin
    return report
