"""Sending jobs to SQS: 10 per SendMessageBatch, several calls in parallel, failed
entries retried with jittered backoff when the failure is not the sender's fault.

Whole calls that fail are not retried here: botocore already did (common/aws.py)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from common.aws_errors import THROTTLING_CODES

log = logging.getLogger(__name__)

# SQS limits: at most 10 entries per SendMessageBatch, and at most 256 KiB for the
# whole request payload (the sum of all message bodies and attributes).
MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024
MAX_ATTEMPTS = 5  # per batch call, the first try included
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0


@dataclass(frozen=True)
class Outgoing:
    """One message to send; ``id`` is unique in the run (the job id) and names failures."""

    id: str
    body: str
    attributes: dict[str, Any] | None = None  # SQS MessageAttributes, kept on redrive

    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"Id": self.id, "MessageBody": self.body}
        if self.attributes:
            entry["MessageAttributes"] = self.attributes
        return entry


@dataclass(frozen=True)
class SendFailure:
    id: str
    code: str
    message: str


@dataclass
class SendReport:
    sent: int = 0
    calls: int = 0
    retried: int = 0  # entries sent again after a retryable failure
    failed: list[SendFailure] = field(default_factory=list)
    message_ids: dict[str, str] = field(default_factory=dict)  # entry id -> SQS MessageId


def full_jitter(attempt: int) -> float:
    """Seconds to wait before try ``attempt + 1``: uniform in [0, min(cap, base * 2^n)]."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt))


def is_retryable(code: str, sender_fault: bool) -> bool:
    """A failed entry is worth sending again unless it is the sender's fault, except
    "slow down", which SQS may mark as the sender's fault too."""
    return not sender_fault or code in THROTTLING_CODES


def chunk(messages: Iterable[Outgoing], max_entries: int = MAX_BATCH_ENTRIES,
          max_bytes: int = MAX_BATCH_BYTES) -> Iterator[list[Outgoing]]:
    """Groups that respect both the entry count and the payload size limits."""
    group: list[Outgoing] = []
    size = 0
    for message in messages:
        length = len(message.body.encode())
        if length > max_bytes:
            raise ValueError(f"message {message.id} is {length} bytes, over the SQS limit")
        if group and (len(group) == max_entries or size + length > max_bytes):
            yield group
            group, size = [], 0
        group.append(message)
        size += length
    if group:
        yield group


class BatchSender:
    """Sends messages to one queue; thread-safe (boto3 clients are)."""

    def __init__(self, sqs: Any, queue_url: str, *, concurrency: int = 8,
                 max_attempts: int = MAX_ATTEMPTS,
                 backoff: Callable[[int], float] = full_jitter,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if concurrency < 1 or max_attempts < 1:
            raise ValueError("concurrency and max_attempts must be at least 1")
        self.sqs = sqs
        self.queue_url = queue_url
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.sleep = sleep

    def send_all(self, messages: Iterable[Outgoing],
                 on_done: Callable[[int], None] = lambda n: None) -> SendReport:
        """Send everything; ``on_done(n)`` after each group with how many it settled."""
        report = SendReport()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="send") as pool:
            futures = [pool.submit(self.send_group, group) for group in chunk(messages)]
            for future in as_completed(futures):
                part = future.result()
                report.sent += part.sent
                report.calls += part.calls
                report.retried += part.retried
                report.failed.extend(part.failed)
                on_done(part.sent + len(part.failed))
        return report

    def send_group(self, group: list[Outgoing]) -> SendReport:
        """One SendMessageBatch, then again for the entries that may succeed on retry."""
        report = SendReport()
        pending = {m.id: m for m in group}
        for attempt in range(1, self.max_attempts + 1):
            last = attempt == self.max_attempts
            report.calls += 1
            try:
                response = self.sqs.send_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[m.entry() for m in pending.values()])
            except (ClientError, BotoCoreError) as exc:
                # botocore has already retried the call itself (common/aws.py): a second
                # layer here would multiply the attempts. The entries are reported.
                code = exc.response.get("Error", {}).get("Code", "ClientError") if isinstance(
                    exc, ClientError) else type(exc).__name__
                report.failed.extend(SendFailure(i, code, str(exc)) for i in pending)
                return report
            report.sent += len(response.get("Successful", []))
            report.message_ids.update({ok["Id"]: ok.get("MessageId", "")
                                       for ok in response.get("Successful", [])})
            retry: dict[str, Outgoing] = {}
            for entry in response.get("Failed", []):
                code, message = entry.get("Code", ""), entry.get("Message", "")
                if is_retryable(code, entry.get("SenderFault", True)) and not last:
                    retry[entry["Id"]] = pending[entry["Id"]]
                else:
                    report.failed.append(SendFailure(entry["Id"], code, message))
            if not retry:
                return report
            log.warning("%d of %d entries failed with retryable errors, retrying",
                        len(retry), len(pending))
            report.retried += len(retry)
            pending = retry
            self.sleep(self.backoff(attempt))
        return report


