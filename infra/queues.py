"""The job queue, the optional priority queue, and a dead-letter queue for each."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import FleetConfig

# Long polling: the longest receive wait SQS allows.
RECEIVE_WAIT_SECONDS = 20
JOB_RETENTION = Duration.days(4)
# A dead-lettered job waits for a fix and a redrive: SQS's longest retention.
DLQ_RETENTION = Duration.days(14)


@dataclass(frozen=True)
class JobQueues:
    main: sqs.Queue
    main_dlq: sqs.Queue
    # With priorityQueue: jobs the worker takes before the main queue's.
    priority: sqs.Queue | None = None
    priority_dlq: sqs.Queue | None = None

    @property
    def consumed(self) -> list[sqs.Queue]:
        """Every queue the worker receives from (main first)."""
        return [q for q in (self.main, self.priority) if q is not None]

    @property
    def dead_letter(self) -> list[sqs.Queue]:
        return [q for q in (self.main_dlq, self.priority_dlq) if q is not None]


def job_queues(scope: Construct, config: FleetConfig) -> JobQueues:
    main, main_dlq = _queue_with_dlq(scope, config, "JobQueue", "DeadLetterQueue")
    if not config.priority_queue:
        return JobQueues(main=main, main_dlq=main_dlq)
    priority, priority_dlq = _queue_with_dlq(
        scope, config, "PriorityQueue", "PriorityDeadLetterQueue")
    return JobQueues(main=main, main_dlq=main_dlq, priority=priority,
                     priority_dlq=priority_dlq)


def _queue_with_dlq(scope: Construct, config: FleetConfig, queue_id: str,
                    dlq_id: str) -> tuple[sqs.Queue, sqs.Queue]:
    # SSE-SQS (not KMS): S3 event notifications can deliver to it without a key policy.
    dlq = sqs.Queue(
        scope, dlq_id,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        retention_period=DLQ_RETENTION,
    )
    queue = sqs.Queue(
        scope, queue_id,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        visibility_timeout=Duration.seconds(config.visibility_timeout),
        receive_message_wait_time=Duration.seconds(RECEIVE_WAIT_SECONDS),
        retention_period=JOB_RETENTION,
        dead_letter_queue=sqs.DeadLetterQueue(
            queue=dlq, max_receive_count=config.max_receive_count),
    )
    return queue, dlq
