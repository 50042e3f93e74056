"""The ECR repository for the worker image: immutable tags, and a lifecycle rule that
can never delete an image a deployment uses.

ECS pins a deployment to the digest its tag named when the deployment started, and every
task it starts later (scale-out, replacement) pulls that digest. With immutable tags a
digest keeps its tag for good, so expiring only *untagged* images (failed or abandoned
pushes) cannot take a deployed image away; a rule by count ("keep the 20 newest") could,
after 20 pushes without a redeploy, and scale-outs would then fail with
CannotPullContainerError. Old tagged images are deleted by hand (docs/deploy.md).
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ecr as ecr
from constructs import Construct

UNTAGGED_IMAGE_DAYS = 14


def worker_repository(scope: Construct) -> ecr.Repository:
    return ecr.Repository(
        scope, "WorkerRepository",
        image_scan_on_push=True,
        image_tag_mutability=ecr.TagMutability.IMMUTABLE,
        removal_policy=RemovalPolicy.RETAIN,
        lifecycle_rules=[ecr.LifecycleRule(
            description=f"expire untagged images {UNTAGGED_IMAGE_DAYS} days after their push",
            tag_status=ecr.TagStatus.UNTAGGED,
            max_image_age=Duration.days(UNTAGGED_IMAGE_DAYS))],
    )
