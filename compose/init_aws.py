"""One-shot setup for the local fleet: the bucket, the DLQ and the job queue with redrive.

Run by the ``init`` service of docker-compose.yml against the S3+SQS emulator. Idempotent:
running it again changes nothing. In AWS the CDK stack owns these resources instead.

Environment: AWS_ENDPOINT_URL (the emulator), AWS_REGION, FLEET_BUCKET, FLEET_QUEUE,
FLEET_DLQ, FLEET_MAX_RECEIVE_COUNT (3), FLEET_VISIBILITY_TIMEOUT (120).
"""

from __future__ import annotations

import json
import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

# Same values as the CDK stack, so the local fleet behaves like the deployed one.
DLQ_RETENTION_SECONDS = 14 * 24 * 3600
RECEIVE_WAIT_SECONDS = 20


def wait_for_endpoint(client: object, attempts: int = 30) -> None:
    """The emulator may still be starting: retry a cheap call for up to ~30 s."""
    for attempt in range(attempts):
        try:
            client.list_buckets()  # type: ignore[attr-defined]
            return
        except EndpointConnectionError:
            if attempt == attempts - 1:
                raise
            time.sleep(1)


def ensure_bucket(s3: object, bucket: str, region: str) -> None:
    kwargs: dict[str, object] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)  # type: ignore[attr-defined]
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in {"BucketAlreadyOwnedByYou",
                                                 "BucketAlreadyExists"}:
            raise


def ensure_queues(sqs: object, queue: str, dlq: str, max_receive_count: int,
                  visibility_timeout: int) -> tuple[str, str]:
    """Create (or update) the DLQ, then the job queue redriving into it; return both URLs."""
    dlq_url = sqs.create_queue(  # type: ignore[attr-defined]
        QueueName=dlq,
        Attributes={"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(  # type: ignore[attr-defined]
        QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = {
        "VisibilityTimeout": str(visibility_timeout),
        "ReceiveMessageWaitTimeSeconds": str(RECEIVE_WAIT_SECONDS),
        "RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}),
    }
    try:
        queue_url = sqs.create_queue(  # type: ignore[attr-defined]
            QueueName=queue, Attributes=attributes)["QueueUrl"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in {"QueueAlreadyExists",
                                                 "QueueNameExists"}:
            raise
        queue_url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]  # type: ignore[attr-defined]
        sqs.set_queue_attributes(  # type: ignore[attr-defined]
            QueueUrl=queue_url, Attributes=attributes)
    return queue_url, dlq_url


def main() -> int:
    region = os.environ.get("AWS_REGION", "us-east-1")
    bucket = os.environ.get("FLEET_BUCKET", "img2img-local")
    queue = os.environ.get("FLEET_QUEUE", "img2img-jobs")
    dlq = os.environ.get("FLEET_DLQ", "img2img-jobs-dlq")
    max_receive_count = int(os.environ.get("FLEET_MAX_RECEIVE_COUNT", "3"))
    visibility_timeout = int(os.environ.get("FLEET_VISIBILITY_TIMEOUT", "120"))

    s3 = boto3.client("s3", region_name=region)
    sqs = boto3.client("sqs", region_name=region)
    wait_for_endpoint(s3)
    ensure_bucket(s3, bucket, region)
    queue_url, dlq_url = ensure_queues(sqs, queue, dlq, max_receive_count, visibility_timeout)
    print(json.dumps({"bucket": bucket, "queue_url": queue_url, "dlq_url": dlq_url}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
