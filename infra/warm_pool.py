"""A warm pool for the GPU group: stopped instances that already booted, checked their
NVIDIA driver and pulled the worker image, so a start skips the boot and the pull.

- ``warmPoolSize`` stopped instances are kept (``MinSize`` and
  ``MaxGroupPreparedCapacity``). A stopped instance bills only its EBS volume
  (``rootVolumeGiB`` of gp3); a started one bills as usual from the start.
- The ECS agent must not register an instance while it is being warmed:
  ``ECS_WARM_POOLS_CHECK=true`` in ecs.config (ECS's requirement for warm pools).
- ECS does not allow ``ReuseOnScaleIn``: a scaled-in instance is terminated and the pool
  warms a new one (boot and pull, billed, then stopped).
- Warm pools take neither Spot nor a mixed-instances policy (infra/config.py refuses
  ``spot`` with ``warmPoolSize``; infra/capacity.py gives the group the launch template).

The model is not pre-loaded on its own: the first task fetches it into the instance's
models volume (kept there for later tasks on the same instance). An image built with
``PREFETCH_MODELS`` carries its weights, and the pool pulls them with the image.
"""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ecr as ecr

from infra.capacity import ECS_CONFIG, GpuCapacity
from infra.config import FleetConfig

WARM_POOLS_CHECK = "ECS_WARM_POOLS_CHECK=true"


def warm_pool(config: FleetConfig, capacity: GpuCapacity,
              repository: ecr.IRepository) -> autoscaling.WarmPool | None:
    """The group's warm pool, or None when ``warmPoolSize`` is 0."""
    if not config.warm_pool_size:
        return None
    capacity.launch_template.user_data.add_commands(
        *pre_pull_commands(repository.repository_uri, config.image_tag))
    repository.grant_pull(capacity.instance_role)
    return capacity.auto_scaling_group.add_warm_pool(
        min_size=config.warm_pool_size,
        max_group_prepared_capacity=config.warm_pool_size,
        pool_state=autoscaling.PoolState.STOPPED,
        reuse_on_scale_in=False,
    )


def pre_pull_commands(repository_uri: str, tag: str, *,
                      ecs_config: str = ECS_CONFIG) -> list[str]:
    """User-data lines: keep the agent out while warming, then pull the worker image.

    A failed pull only costs the first task its pull, so it is reported, not fatal.
    """
    registry = f"{Aws.ACCOUNT_ID}.dkr.ecr.{Aws.REGION}.{Aws.URL_SUFFIX}"
    image = f"{repository_uri}:{tag}"
    return [
        "# img2img: warm pool. The agent registers only once the instance is in service.",
        f"echo {WARM_POOLS_CHECK} >> {ecs_config}",
        "# img2img: pull the worker image now, so a started instance skips the pull.",
        "if command -v aws >/dev/null 2>&1; then",
        "  systemctl start docker 2>/dev/null || true",
        f"  aws ecr get-login-password --region {Aws.REGION} | docker login --username AWS "
        f"--password-stdin {registry} && docker pull {image} "
        "&& echo 'img2img: worker image pulled' "
        "|| echo 'img2img: pre-pull failed; the first task pulls the image'",
        "else",
        "  echo 'img2img: no aws CLI on this AMI; the first task pulls the image'",
        "fi",
    ]
