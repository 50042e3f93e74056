"""The fleet's bucket: inputs, outputs and result records; optional upload notifications."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import FleetConfig


def fleet_bucket(scope: Construct, config: FleetConfig) -> s3.Bucket:
    """Private, SSE-S3, TLS only; kept when the stack is deleted (it is the user's data)."""
    rules = [s3.LifecycleRule(
        id="abort-incomplete-uploads",
        abort_incomplete_multipart_upload_after=Duration.days(7))]
    if config.output_expiration_days:
        rules.append(s3.LifecycleRule(
            id="expire-outputs", prefix=config.output_prefix,
            expiration=Duration.days(config.output_expiration_days)))
    return s3.Bucket(
        scope, "Bucket",
        encryption=s3.BucketEncryption.S3_MANAGED,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        enforce_ssl=True,
        minimum_tls_version=1.2,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        lifecycle_rules=rules,
        removal_policy=RemovalPolicy.RETAIN,
    )


def notify_uploads(bucket: s3.Bucket, queue: sqs.IQueue, prefix: str) -> None:
    """Objects created under ``prefix`` become jobs: the worker reads the S3 event from
    the job queue and applies its settings' defaults."""
    bucket.add_event_notification(
        s3.EventType.OBJECT_CREATED,
        s3n.SqsDestination(queue),
        s3.NotificationKeyFilter(prefix=prefix),
    )
