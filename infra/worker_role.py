"""The worker task role: exactly what the worker does, on exactly its own resources."""

from __future__ import annotations

from aws_cdk import Aws, Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra.config import FleetConfig
from infra.queues import JobQueues


def worker_task_role(scope: Construct, config: FleetConfig, *, bucket: s3.IBucket,
                     queues: JobQueues, cluster: ecs.ICluster,
                     events_topic: sns.ITopic) -> iam.Role:
    """Read inputs, write outputs, consume its queues, publish its events, protect its own
    task: nothing else."""
    role = iam.Role(scope, "WorkerTaskRole",
                    assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
                    description="img2img worker: read inputs, write outputs, own queue")
    _bucket_access(role, config, bucket)
    if config.models_uri:
        _model_store_access(role, config.models_uri)
    # Batch variants (DeleteMessageBatch, ...) are authorised by the same actions.
    role.add_to_policy(iam.PolicyStatement(
        sid="ConsumeJobQueues",
        actions=["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"],
        resources=[q.queue_arn for q in queues.consumed]))
    role.add_to_policy(iam.PolicyStatement(
        sid="PublishEvents", actions=["sns:Publish"], resources=[events_topic.topic_arn]))
    # Scale-in protection: the ECS agent's endpoint calls these with the task role's
    # credentials, so without them protection is denied and busy tasks can be stopped.
    role.add_to_policy(iam.PolicyStatement(
        sid="OwnTaskProtection",
        actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"],
        resources=[Stack.of(scope).format_arn(
            service="ecs", resource="task", resource_name=f"{cluster.cluster_name}/*")]))
    return role


def _bucket_access(role: iam.Role, config: FleetConfig, bucket: s3.IBucket) -> None:
    read_prefixes = [config.input_prefix] + (
        [config.uploads_prefix] if config.uploads_prefix else [])
    role.add_to_policy(iam.PolicyStatement(
        sid="ReadInputs", actions=["s3:GetObject"],
        resources=[bucket.arn_for_objects(f"{p}*") for p in read_prefixes]))
    role.add_to_policy(iam.PolicyStatement(
        sid="WriteOutputs", actions=["s3:PutObject"],
        resources=[bucket.arn_for_objects(f"{config.output_prefix}*")]))
    # The worker reads result records (a job's claim and outcome) to acknowledge duplicate
    # deliveries, and the job-id metadata of an output it finds already there.
    role.add_to_policy(iam.PolicyStatement(
        sid="ReadResults", actions=["s3:GetObject"],
        resources=[bucket.arn_for_objects(f"{config.output_prefix}*")]))
    # A released job drops its claim (its 'running' record) so another delivery need not
    # wait for the claim to lapse: records only, never outputs.
    role.add_to_policy(iam.PolicyStatement(
        sid="DropClaims", actions=["s3:DeleteObject"],
        resources=[bucket.arn_for_objects(f"{config.output_prefix}*.json")]))
    # Without ListBucket a missing key answers 403, not 404: the worker could not
    # tell "no result yet" or "input deleted" from "access denied".
    role.add_to_policy(iam.PolicyStatement(
        sid="ListOwnPrefixes", actions=["s3:ListBucket"],
        resources=[bucket.bucket_arn],
        conditions={"StringLike": {"s3:prefix": [
            f"{p}*" for p in [*read_prefixes, config.output_prefix]]}}))


def _model_store_access(role: iam.Role, models_uri: str) -> None:
    bucket, _, prefix = models_uri.removeprefix("s3://").partition("/")
    bucket_arn = f"arn:{Aws.PARTITION}:s3:::{bucket}"
    role.add_to_policy(iam.PolicyStatement(
        sid="ReadModels", actions=["s3:GetObject"], resources=[f"{bucket_arn}/{prefix}*"]))
    # The worker lists the prefix to sync a model folder into its cache.
    role.add_to_policy(iam.PolicyStatement(
        sid="ListModels", actions=["s3:ListBucket"], resources=[bucket_arn],
        conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}}))
