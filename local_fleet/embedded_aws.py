"""An embedded S3+SQS (moto server on localhost) with the fleet's resources.

It creates what the real infrastructure (infra/) creates: a bucket, a job queue and a
DLQ with a redrive policy. Application code never creates queues; only this local
stand-in for the infrastructure does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

DEFAULT_BUCKET = "img2img-fleet"
DEFAULT_QUEUE = "img2img-jobs"
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class FleetResources:
    endpoint_url: str
    region: str
    bucket: str
    queue_url: str
    dlq_url: str
    max_receive_count: int

    def environment(self) -> dict[str, str]:
        """Variables that point boto3 and the worker at these resources."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "IMG2IMG_QUEUE_URL": self.queue_url,
        }


def start_moto_server(host: str = "127.0.0.1", port: int = 0) -> tuple[Any, str]:
    """Start a moto server thread; return (server, endpoint URL)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    bound_host, bound_port = server.get_host_and_port()
    return server, f"http://{bound_host}:{bound_port}"


def create_fleet_resources(
    s3: Any,
    sqs: Any,
    *,
    endpoint_url: str,
    region: str = DEFAULT_REGION,
    bucket: str = DEFAULT_BUCKET,
    queue_name: str = DEFAULT_QUEUE,
    max_receive_count: int = 3,
    visibility_timeout: int = 120,
) -> FleetResources:
    """Bucket, DLQ (14-day retention) and queue with redrive, as infra/ would make them."""
    s3.create_bucket(Bucket=bucket)
    dlq_url = sqs.create_queue(
        QueueName=f"{queue_name}-dlq",
        Attributes={"MessageRetentionPeriod": str(14 * 24 * 3600)},
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=queue_name,
        Attributes={
            "VisibilityTimeout": str(visibility_timeout),
            "ReceiveMessageWaitTimeSeconds": "20",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}),
        },
    )["QueueUrl"]
    return FleetResources(endpoint_url=endpoint_url, region=region, bucket=bucket,
                          queue_url=queue_url, dlq_url=dlq_url,
                          max_receive_count=max_receive_count)


def enable_upload_notifications(s3: Any, sqs: Any, resources: FleetResources,
                                prefix: str) -> None:
    """S3 ObjectCreated events for ``prefix`` go to the job queue (as infra/ can set up)."""
    queue_arn = sqs.get_queue_attributes(QueueUrl=resources.queue_url,
                                         AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=resources.bucket,
        NotificationConfiguration={"QueueConfigurations": [{
            "QueueArn": queue_arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
        }]},
    )
