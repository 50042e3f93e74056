"""The job queue and its dead-letter queue."""

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


def job_queues(scope: Construct, config: FleetConfig) -> JobQueues:
    # SSE-SQS (not KMS): S3 event notifications can deliver to it without a key policy.
    dlq = sqs.Queue(
        scope, "DeadLetterQueue",
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        retention_period=DLQ_RETENTION,
    )
    main = sqs.Queue(
        scope, "JobQueue",
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        visibility_timeout=Duration.seconds(config.visibility_timeout),
        receive_message_wait_time=Duration.seconds(RECEIVE_WAIT_SECONDS),
        retention_period=JOB_RETENTION,
        dead_letter_queue=sqs.DeadLetterQueue(
            queue=dlq, max_receive_count=config.max_receive_count),
    )
    return JobQueues(main=main, main_dlq=dlq)
