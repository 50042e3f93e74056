"""Queue facts: depth counts and the DLQ a queue redrives to (from its RedrivePolicy)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

COUNT_ATTRIBUTES = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed"]


@dataclass(frozen=True)
class QueueCounts:
    visible: int
    in_flight: int
    delayed: int


@dataclass(frozen=True)
class QueueDepth:
    queue: QueueCounts
    dlq: QueueCounts | None
    dlq_url: str | None


def queue_counts(sqs: Any, queue_url: str) -> QueueCounts:
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url,
                                     AttributeNames=COUNT_ATTRIBUTES).get("Attributes", {})
    return QueueCounts(visible=int(attrs.get("ApproximateNumberOfMessages", 0)),
                       in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
                       delayed=int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)))


def queue_arn(sqs: Any, queue_url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]


def dlq_arn_of(sqs: Any, queue_url: str) -> str | None:
    """The dead-letter queue's ARN from the queue's RedrivePolicy, None without one."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url,
                                     AttributeNames=["RedrivePolicy"]).get("Attributes", {})
    policy = attrs.get("RedrivePolicy")
    return json.loads(policy).get("deadLetterTargetArn") if policy else None


def url_of_arn(sqs: Any, arn: str) -> str:
    """arn:aws:sqs:<region>:<account>:<name> -> the queue URL."""
    _, _, _, _region, account, name = arn.split(":", 5)
    return sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]


def queue_depth(sqs: Any, queue_url: str) -> QueueDepth:
    arn = dlq_arn_of(sqs, queue_url)
    dlq_url = url_of_arn(sqs, arn) if arn else None
    return QueueDepth(queue=queue_counts(sqs, queue_url),
                      dlq=queue_counts(sqs, dlq_url) if dlq_url else None, dlq_url=dlq_url)
