"""The managed policy ``img2img-producer`` needs, and nothing more.

Attach it to the user or role that runs the producer. Statement by statement:

- ``Enqueue``: SendMessage (SendMessageBatch) and GetQueueAttributes on the job queues;
  ``Status`` reads the DLQs' attributes too, and their URLs (GetQueueUrl, from the
  queues' RedrivePolicy ARNs).
- ``Redrive``: receive, delete and change visibility on the DLQs (the producer's own
  redrive), and SQS's message move task from a DLQ back to its queue (``--move-task``).
- ``ReadFleetObjects``: inputs (head, ETag) and outputs (records, counters, manifests,
  images for ``fetch`` and ``gallery``).
- ``WriteFleetObjects``: uploads under the input prefix; manifests, cancel orders and
  gallery pages under the output prefix. Never a delete.
- ``ListFleetPrefixes``: listing under the input, uploads and output prefixes only.
- ``StartWorkers``: the start call: UpdateService (desired count) on the worker service,
  SetDesiredCapacity on the GPU group; ``DescribeServices`` and
  ``DescribeAutoScalingGroups`` (which IAM scopes to no resource) read what is there.
"""

from __future__ import annotations

from aws_cdk import Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3

from infra.config import FleetConfig
from infra.queues import JobQueues


def producer_policy(stack: Stack, config: FleetConfig, *, bucket: s3.IBucket,
                    queues: JobQueues, service: ecs.IService,
                    group: autoscaling.IAutoScalingGroup) -> iam.ManagedPolicy:
    jobs = [q.queue_arn for q in queues.consumed]
    dlqs = [q.queue_arn for q in (queues.main_dlq, queues.priority_dlq) if q is not None]
    prefixes = [p for p in (config.input_prefix, config.uploads_prefix, config.output_prefix)
                if p]
    return iam.ManagedPolicy(
        stack, "ProducerPolicy",
        description="What img2img-producer needs: enqueue, status, fetch, gallery, cancel, "
                    "redrive and the start call",
        statements=[
            iam.PolicyStatement(sid="Enqueue", resources=jobs, actions=[
                "sqs:SendMessage", "sqs:GetQueueAttributes"]),
            iam.PolicyStatement(sid="Status", resources=dlqs, actions=[
                "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]),
            iam.PolicyStatement(sid="Redrive", resources=dlqs, actions=[
                "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                "sqs:StartMessageMoveTask"]),
            iam.PolicyStatement(
                sid="ReadFleetObjects", actions=["s3:GetObject"],
                resources=[bucket.arn_for_objects(f"{p}*") for p in prefixes]),
            iam.PolicyStatement(
                sid="WriteFleetObjects", actions=["s3:PutObject"],
                resources=[bucket.arn_for_objects(f"{p}*") for p in prefixes]),
            iam.PolicyStatement(
                sid="ListFleetPrefixes", actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}}),
            iam.PolicyStatement(
                sid="StartWorkers", actions=["ecs:UpdateService", "ecs:DescribeServices"],
                resources=[service.service_arn]),
            iam.PolicyStatement(
                sid="StartInstances", actions=["autoscaling:SetDesiredCapacity"],
                resources=[stack.format_arn(
                    service="autoscaling", resource="autoScalingGroup",
                    resource_name=f"*:autoScalingGroupName/{group.auto_scaling_group_name}")]),
            iam.PolicyStatement(
                sid="ReadInstances", actions=["autoscaling:DescribeAutoScalingGroups"],
                resources=["*"]),
        ])
