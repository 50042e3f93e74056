"""The worker: its task definition (matching the image) and service.

The image (Dockerfile) runs as 10001:10001, writes only to /tmp (its health file) and
/models (HF_HOME, IMG2IMG_MODEL_CACHE), checks itself with ``img2img-worker
healthcheck`` and stops on SIGTERM within IMG2IMG_STOP_DEADLINE.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra.capacity import DRIVER_OK_CONSTRAINT, GpuCapacity
from infra.config import FleetConfig
from infra.queues import RECEIVE_WAIT_SECONDS, JobQueues

CONTAINER_NAME = "worker"
# The image's numeric user (Dockerfile: USER 10001:10001); the task definition states it
# too, so the container cannot run as root whatever image the tag points at.
WORKER_USER = "10001:10001"
# Where the image keeps downloaded weights (HF_HOME) and the worker's own model cache.
MODELS_MOUNT = "/models"
MODELS_VOLUME = "models"
# With a read-only root filesystem the only writable paths are /models (a volume) and a
# tmpfs at /tmp (the health file, temporary files, HOME for libraries that cache under
# ~). tmpfs pages count against the task's memory.
TMP_MOUNT = "/tmp"
TMP_SIZE_MIB = 1024
# /dev/shm: Docker's default is 64 MiB, too small for torch's shared-memory tensors.
SHARED_MEMORY_MIB = 1024
# Deployments replace tasks in place (see worker_service): never more tasks than before.
DEPLOYMENT_MIN_HEALTHY_PERCENT = 0
DEPLOYMENT_MAX_PERCENT = 100
# ECS caps a container health check's start period at 300 s.
ECS_MAX_HEALTH_START_PERIOD = 300
LOG_RETENTION = {
    1: logs.RetentionDays.ONE_DAY, 3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS, 7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS, 30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS, 90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS, 365: logs.RetentionDays.ONE_YEAR,
}


@dataclass(frozen=True)
class WorkerService:
    service: ecs.Ec2Service
    task_definition: ecs.Ec2TaskDefinition
    log_group: logs.LogGroup


def worker_service(scope: Construct, config: FleetConfig, *, capacity: GpuCapacity,
                   repository: ecr.IRepository, task_role: iam.IRole, bucket: s3.IBucket,
                   queues: JobQueues, events_topic: sns.ITopic) -> WorkerService:
    log_group = logs.LogGroup(
        scope, "WorkerLogs",
        retention=LOG_RETENTION[config.log_retention_days],
        removal_policy=RemovalPolicy.DESTROY,
    )
    task_definition = ecs.Ec2TaskDefinition(
        scope, "WorkerTask",
        network_mode=ecs.NetworkMode.BRIDGE,
        task_role=task_role,
        # Only on instances whose NVIDIA driver runs the image's CUDA (capacity.py).
        placement_constraints=[ecs.PlacementConstraint.member_of(DRIVER_OK_CONSTRAINT)],
        volumes=[ecs.Volume(
            name=MODELS_VOLUME,
            # One Docker volume per instance, shared by its tasks: weights survive task
            # restarts; a new volume is seeded from the image's /models.
            docker_volume_configuration=ecs.DockerVolumeConfiguration(
                scope=ecs.Scope.SHARED, autoprovision=True, driver="local"))],
    )
    container = task_definition.add_container(
        CONTAINER_NAME,
        image=ecs.ContainerImage.from_ecr_repository(repository, config.image_tag),
        essential=True,
        gpu_count=1,
        cpu=config.task_cpu,
        # Placement reserves the soft value; the hard limit keeps a runaway process from
        # taking the host (and its ECS agent) down with it: the kernel kills the task.
        memory_reservation_mib=config.task_memory_mib,
        memory_limit_mib=config.task_memory_limit_mib,
        user=WORKER_USER,
        readonly_root_filesystem=True,
        stop_timeout=Duration.seconds(config.stop_timeout),
        linux_parameters=_linux_parameters(scope),
        health_check=ecs.HealthCheck(
            command=["CMD", "img2img-worker", "healthcheck"],
            interval=Duration.seconds(30),
            timeout=Duration.seconds(10),
            retries=3,
            # Model download + load can take minutes on a fresh instance.
            start_period=Duration.seconds(ECS_MAX_HEALTH_START_PERIOD),
        ),
        logging=ecs.LogDrivers.aws_logs(
            stream_prefix="worker", log_group=log_group,
            mode=ecs.AwsLogDriverMode.NON_BLOCKING),
        environment=worker_environment(config, bucket=bucket, queues=queues,
                                       events_topic=events_topic),
        # Injected by the agent with the task execution role, which CDK lets read exactly
        # this secret; the value never appears in the task definition.
        secrets=({"IMG2IMG_WEBHOOK_SECRET": ecs.Secret.from_secrets_manager(
            webhook_secret(scope, config.webhook_secret))} if config.webhook_secret else None),
    )
    container.add_mount_points(ecs.MountPoint(
        container_path=MODELS_MOUNT, source_volume=MODELS_VOLUME, read_only=False))

    service = ecs.Ec2Service(
        scope, "WorkerService",
        cluster=capacity.cluster,
        task_definition=task_definition,
        # Scaling owns the count; it starts at zero and follows the queue.
        desired_count=0,
        # Stop first, then start: the group holds at most maxTasks instances, one task
        # each, so a new task can only go where an old one has stopped. At 100%/200% a
        # deployment under load waits for instances the group cannot add, and stack
        # updates hang. Busy tasks are scale-in protected: a deployment stops them only
        # once their jobs are done. Draining (a Spot notice) needs 0% too: at 100% ECS
        # stops a draining task only once its replacement runs, past the notice.
        min_healthy_percent=DEPLOYMENT_MIN_HEALTHY_PERCENT,
        max_healthy_percent=DEPLOYMENT_MAX_PERCENT,
        circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
        capacity_provider_strategies=[ecs.CapacityProviderStrategy(
            capacity_provider=capacity.provider.capacity_provider_name, weight=1)],
    )
    # The service may only be created once the capacity provider is associated with the
    # cluster; CDK adds that association (under the cluster) only at synth time, so
    # depend on the whole cluster construct.
    service.node.add_dependency(capacity.cluster)
    return WorkerService(service=service, task_definition=task_definition,
                         log_group=log_group)


def worker_environment(config: FleetConfig, *, bucket: s3.IBucket, queues: JobQueues,
                       events_topic: sns.ITopic) -> dict[str, str]:
    """The worker's settings (``IMG2IMG_*``, worker/settings.py) for this stack."""

    def s3_uri(prefix: str) -> str:
        return f"s3://{bucket.bucket_name}/{prefix}"

    allowed_inputs = [s3_uri(config.input_prefix)]
    if config.uploads_prefix:
        allowed_inputs.append(s3_uri(config.uploads_prefix))
    env = {
        "AWS_REGION": Aws.REGION,
        "IMG2IMG_QUEUE_URL": queues.main.queue_url,
        "IMG2IMG_ALLOWED_INPUTS": ",".join(allowed_inputs),
        "IMG2IMG_ALLOWED_OUTPUTS": s3_uri(config.output_prefix),
        "IMG2IMG_EVENT_OUTPUT_PREFIX": config.output_prefix,
        "IMG2IMG_DEFAULT_MODELS": config.default_models,
        "IMG2IMG_DEVICE": "cuda",
        "IMG2IMG_VISIBILITY_TIMEOUT": str(config.visibility_timeout),
        "IMG2IMG_STOP_DEADLINE": str(config.stop_deadline),
        "IMG2IMG_RECEIVE_WAIT_SECONDS": str(RECEIVE_WAIT_SECONDS),
        # The image's home is on the read-only root: libraries that cache under ~
        # (Triton's kernel cache, for torch.compile) write to the tmpfs instead.
        "HOME": TMP_MOUNT,
        "HF_HOME": f"{MODELS_MOUNT}/huggingface",
        "IMG2IMG_MODEL_CACHE": f"{MODELS_MOUNT}/img2img",
    }
    if config.worker_allowed_models:
        env["IMG2IMG_ALLOWED_MODELS"] = config.worker_allowed_models
    if queues.priority is not None:
        env["IMG2IMG_PRIORITY_QUEUE_URL"] = queues.priority.queue_url
    env["IMG2IMG_EVENTS_TOPIC_ARN"] = events_topic.topic_arn
    if config.webhook_url:
        env["IMG2IMG_WEBHOOK_URL"] = config.webhook_url
    if config.gpu_price_per_hour is not None:
        env["IMG2IMG_GPU_PRICE_PER_HOUR"] = f"{config.gpu_price_per_hour:g}"
    return env


def webhook_secret(scope: Construct, reference: str) -> secretsmanager.ISecret:
    """The secret named by ``webhookSecret``: a full ARN (with the 6-character suffix
    Secrets Manager adds), a partial ARN, or a name in this account and region."""
    if not reference.startswith("arn:"):
        return secretsmanager.Secret.from_secret_name_v2(scope, "WebhookSecret", reference)
    if re.search(r"-[A-Za-z0-9]{6}$", reference):
        return secretsmanager.Secret.from_secret_complete_arn(scope, "WebhookSecret",
                                                              reference)
    return secretsmanager.Secret.from_secret_partial_arn(scope, "WebhookSecret", reference)


def _linux_parameters(scope: Construct) -> ecs.LinuxParameters:
    linux = ecs.LinuxParameters(scope, "WorkerLinux", init_process_enabled=True,
                                shared_memory_size=SHARED_MEMORY_MIB)
    # Docker mounts a tmpfs noexec unless told otherwise; torch.compile loads the kernels
    # it builds from here, so this one allows exec (never setuid or devices).
    linux.add_tmpfs(ecs.Tmpfs(
        container_path=TMP_MOUNT, size=TMP_SIZE_MIB,
        mount_options=[ecs.TmpfsMountOption.EXEC, ecs.TmpfsMountOption.NOSUID,
                       ecs.TmpfsMountOption.NODEV]))
    return linux
