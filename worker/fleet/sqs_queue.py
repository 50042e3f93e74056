"""The SQS side of the worker: receive, delete and change visibility, in batches."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# SQS limits (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/)
MAX_RECEIVE_MESSAGES = 10  # ReceiveMessage MaxNumberOfMessages
MAX_WAIT_SECONDS = 20  # long polling cap
MAX_BATCH_ENTRIES = 10  # Delete/ChangeMessageVisibility/SendMessageBatch entries
MAX_VISIBILITY_SECONDS = 12 * 60 * 60  # from the message's first receipt


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    received_at: float  # time.monotonic() when this worker received it


def chunks(items: list, size: int = MAX_BATCH_ENTRIES) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SqsQueue:
    def __init__(self, sqs: Any, queue_url: str) -> None:
        if not queue_url:
            raise ValueError("IMG2IMG_QUEUE_URL is not set")
        self.sqs = sqs
        self.queue_url = queue_url

    def receive(self, max_messages: int, wait_seconds: int, visibility_timeout: int,
                now: float) -> list[ReceivedMessage]:
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(max_messages, MAX_RECEIVE_MESSAGES)),
            WaitTimeSeconds=min(wait_seconds, MAX_WAIT_SECONDS),
            VisibilityTimeout=visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [
            ReceivedMessage(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m["Body"],
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                received_at=now,
            )
            for m in response.get("Messages", [])
        ]

    def delete(self, receipts: list[str]) -> list[str]:
        """Delete in batches of 10; return the receipts that failed."""
        failed: list[str] = []
        for chunk in chunks(receipts):
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
            response = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            failed.extend(chunk[int(f["Id"])] for f in response.get("Failed", []))
        return failed

    def change_visibility(self, entries: list[tuple[str, int]]) -> list[str]:
        """Set visibility per receipt in batches of 10; return the receipts that failed."""
        failed: list[str] = []
        for chunk in chunks(entries):
            batch = [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": int(v)}
                     for i, (r, v) in enumerate(chunk)]
            response = self.sqs.change_message_visibility_batch(QueueUrl=self.queue_url,
                                                                Entries=batch)
            for f in response.get("Failed", []):
                failed.append(chunk[int(f["Id"])][0])
                log.warning("visibility change failed: %s", f.get("Message", f))
        return failed

    def release(self, receipts: list[str], delay_seconds: int = 0) -> list[str]:
        """Make messages visible again after ``delay_seconds`` (0: at once)."""
        return self.change_visibility([(r, delay_seconds) for r in receipts])
