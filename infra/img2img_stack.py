"""The img2img fleet stack: S3 in/out, SQS + DLQ, GPU ECS workers scaled on queue depth.

Every knob is a CDK context key (see ``FleetConfig.from_context`` and docs/deploy.md);
nothing is read at import time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from aws_cdk import (
    Annotations,
    Aws,
    CfnOutput,
    Duration,
    RemovalPolicy,
    Stack,
    Token,
)
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3n
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

# GPU families the ECS GPU AMI (x86_64, NVIDIA) serves and the worker is sized for.
GPU_FAMILIES = ("g5", "g6", "g6e")
# ECS caps a container health check's start period at 300 s.
ECS_MAX_HEALTH_START_PERIOD = 300
# SQS limits: visibility timeout at most 12 h, retention at most 14 days.
SQS_MAX_VISIBILITY_SECONDS = 12 * 60 * 60
DLQ_RETENTION = Duration.days(14)
# Spot gives a 2-minute interruption notice. The agent polls for it every second and sets
# its instance DRAINING, then the service scheduler stops the task: keep this much of the
# notice for that, so SIGKILL (at stopTimeout after SIGTERM) comes before the reclaim.
SPOT_NOTICE_SECONDS = 120
SPOT_DRAIN_LEAD_SECONDS = 30
# Between the worker's stop deadline and ECS's SIGKILL: release messages, flush deletes.
STOP_MARGIN_SECONDS = 15
# Receives before the DLQ. SIGTERM releases (scale-in, deployments, Spot reclaims) count
# as receives too, so the allowance covers transient failures plus interruptions.
MAX_RECEIVE_COUNT = {"on-demand": 5, "spot": 10}
SPOT_MIN_RECEIVE_COUNT = 5
STOP_TIMEOUT = {"on-demand": 120, "spot": SPOT_NOTICE_SECONDS - SPOT_DRAIN_LEAD_SECONDS}
STOP_DEADLINE = {"on-demand": 100, "spot": 70}
# Long polling: the longest receive wait SQS allows.
RECEIVE_WAIT_SECONDS = 20
# Where the image keeps downloaded weights (HF_HOME) and the worker's own model cache.
MODELS_MOUNT = "/models"
CONTAINER_NAME = "worker"
# The image's numeric user (Dockerfile: USER 10001:10001); the task definition states it
# too, so the container cannot run as root whatever image the tag points at.
WORKER_USER = "10001:10001"
# With a read-only root filesystem the only writable paths are /models (a volume) and a
# tmpfs at /tmp (the health file, temporary files, HOME for libraries that cache under
# ~). tmpfs pages count against the task's memory.
TMP_MOUNT = "/tmp"
TMP_SIZE_MIB = 1024
# /dev/shm: Docker's default is 64 MiB, too small for torch's shared-memory tensors.
SHARED_MEMORY_MIB = 1024
# ECS instance attributes the user data sets from nvidia-smi; tasks need driver-ok.
DRIVER_VERSION_ATTRIBUTE = "img2img.nvidia-driver"
DRIVER_OK_ATTRIBUTE = "img2img.driver-ok"
# Instance memory per "xlarge" of size (g5.2xlarge: 2 x 16 GiB); the OS, Docker, the ECS
# agent and the NVIDIA driver keep this much of it.
MEMORY_GIB_PER_XLARGE = {"g5": 16, "g6": 16, "g6e": 32}
HOST_RESERVED_MIB = 2048
# The worker's CloudWatch EMF namespace and its task-protection failure metric
# (worker/logs.py, worker/task_protection.py).
WORKER_METRICS_NAMESPACE = "Img2ImgFleet"
PROTECTION_FAILURE_METRIC = "TaskProtectionFailures"
# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION = {
    1: logs.RetentionDays.ONE_DAY, 3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS, 7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS, 30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS, 90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS, 365: logs.RetentionDays.ONE_YEAR,
}


def _bool(value: Any) -> bool:
    """Context from ``-c key=value`` arrives as a string; from cdk.json as JSON."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        return tuple(str(v).strip() for v in value if str(v).strip())
    return tuple(v.strip() for v in str(value).split(",") if v.strip())


_S3_PREFIX_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/(\S+/)?$")


def _prefix(value: Any) -> str:
    text = str(value).strip().lstrip("/")
    return text if not text or text.endswith("/") else text + "/"


@dataclass(frozen=True)
class FleetConfig:
    """Deployment settings; field names map to camelCase context keys (``CONTEXT_KEYS``)."""

    spot: bool = False
    instance_types: tuple[str, ...] = ("g5.xlarge", "g6.xlarge")
    max_tasks: int = 4
    backlog_per_task: int = 32
    # None: the default for the capacity type (on-demand or Spot), see __post_init__.
    max_receive_count: int | None = None
    visibility_timeout: int = 120
    stop_timeout: int | None = None
    stop_deadline: int | None = None
    input_prefix: str = "inputs/"
    output_prefix: str = "outputs/"
    uploads_prefix: str = ""
    output_expiration_days: int = 0
    oldest_message_alarm_seconds: int = 3600
    alarm_email: str = ""
    image_tag: str = "latest"
    default_models: str = "sd15"
    models_uri: str = ""
    allowed_models: str = ""
    task_memory_mib: int = 12288
    task_memory_limit_mib: int = 14336
    task_cpu: int = 3072
    root_volume_gib: int = 100
    log_retention_days: int = 30
    max_azs: int = 3
    min_driver_version: int = 580

    def __post_init__(self) -> None:
        capacity = "spot" if self.spot else "on-demand"
        for name, defaults in (("max_receive_count", MAX_RECEIVE_COUNT),
                               ("stop_timeout", STOP_TIMEOUT), ("stop_deadline", STOP_DEADLINE)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[capacity])
        problems: list[str] = []
        for itype in self.instance_types:
            if itype.split(".")[0] not in GPU_FAMILIES:
                problems.append(f"instanceTypes: {itype!r} is not in {GPU_FAMILIES}")
        if not self.instance_types:
            problems.append("instanceTypes: at least one instance type")
        if self.max_tasks < 1:
            problems.append(f"maxTasks: must be >= 1 (got {self.max_tasks})")
        if self.backlog_per_task < 1:
            problems.append(f"backlogPerTask: must be >= 1 (got {self.backlog_per_task})")
        if not 1 <= self.max_receive_count <= 1000:
            problems.append(f"maxReceiveCount: 1..1000 (got {self.max_receive_count})")
        # The worker extends visibility every third of the timeout: keep that >= 10 s.
        if not 30 <= self.visibility_timeout <= SQS_MAX_VISIBILITY_SECONDS:
            problems.append(f"visibilityTimeout: 30..43200 s (got {self.visibility_timeout})")
        # The worker must give up the batch, release and exit before ECS sends SIGKILL.
        if not 0 < self.stop_deadline <= self.stop_timeout - STOP_MARGIN_SECONDS:
            problems.append(
                f"stopDeadline ({self.stop_deadline}) must be > 0 and at least "
                f"{STOP_MARGIN_SECONDS} s below stopTimeout ({self.stop_timeout}): ECS kills "
                "the container at stopTimeout")
        if self.spot and self.stop_timeout > SPOT_NOTICE_SECONDS - SPOT_DRAIN_LEAD_SECONDS:
            problems.append(
                f"stopTimeout ({self.stop_timeout}) must be at most "
                f"{SPOT_NOTICE_SECONDS - SPOT_DRAIN_LEAD_SECONDS} s with spot: the instance "
                f"is reclaimed {SPOT_NOTICE_SECONDS} s after the notice, and draining "
                "starts some seconds into it")
        if self.spot and self.max_receive_count < SPOT_MIN_RECEIVE_COUNT:
            problems.append(
                f"maxReceiveCount ({self.max_receive_count}) must be >= "
                f"{SPOT_MIN_RECEIVE_COUNT} with spot: every Spot reclaim releases the jobs a "
                "task holds and counts as a receive")
        for name in ("input_prefix", "output_prefix"):
            if not getattr(self, name):
                problems.append(f"{_camel(name)}: must not be empty")
        prefixes = [p for p in (self.input_prefix, self.output_prefix, self.uploads_prefix) if p]
        for a in prefixes:
            for b in prefixes:
                if a is not b and a.startswith(b):
                    problems.append(f"prefixes must not nest: {a!r} is inside {b!r}")
        if not 0 < self.task_memory_mib < self.task_memory_limit_mib:
            problems.append(
                f"taskMemoryLimitMiB ({self.task_memory_limit_mib}) must be above "
                f"taskMemoryMiB ({self.task_memory_mib}), the memory reserved for placement")
        smallest = min((instance_memory_mib(t) for t in self.instance_types
                        if instance_memory_mib(t)), default=None)
        if smallest and self.task_memory_limit_mib > smallest - HOST_RESERVED_MIB:
            problems.append(
                f"taskMemoryLimitMiB ({self.task_memory_limit_mib}) must leave "
                f"{HOST_RESERVED_MIB} MiB of the smallest instance type's {smallest} MiB "
                "to the host")
        if not 1 <= self.max_azs <= 6:
            problems.append(f"maxAzs: 1..6 (got {self.max_azs})")
        if self.min_driver_version < 0:
            problems.append(f"minDriverVersion: a driver major version (got "
                            f"{self.min_driver_version})")
        if self.log_retention_days not in LOG_RETENTION:
            problems.append(f"logRetentionDays: one of {sorted(LOG_RETENTION)}")
        if self.models_uri and not _S3_PREFIX_URI.match(self.models_uri):
            problems.append(f"modelsUri: an s3://bucket/prefix/ URI (got {self.models_uri!r})")
        if self.output_expiration_days < 0:
            problems.append("outputExpirationDays: must be >= 0 (0 keeps outputs)")
        if problems:
            raise ValueError("invalid context: " + "; ".join(problems))

    @property
    def worker_allowed_models(self) -> str | None:
        """IMG2IMG_ALLOWED_MODELS, or None for the worker's default (its built-in aliases).

        With ``modelsUri`` the fleet may load every model under it, plus ``allowedModels``
        (by default ``defaultModels``).
        """
        listed = self.allowed_models or (self.default_models if self.models_uri else "")
        patterns = [p for p in listed.split(",") if p]
        if self.models_uri:
            patterns.append(self.models_uri + "*")
        return ",".join(patterns) or None

    @property
    def heartbeat_seconds(self) -> float:
        """What the worker will use: a third of the visibility timeout."""
        return self.visibility_timeout / 3

    @classmethod
    def from_context(cls, get: Callable[[str], Any]) -> FleetConfig:
        """Read every field from ``get(camelCaseKey)`` (e.g. ``node.try_get_context``)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = get(_camel(f.name))
            if raw is None:
                continue
            values[f.name] = _CONVERT[f.name](raw)
        return cls(**values)


def driver_check_commands(min_major: int, *, ecs_config: str = "/etc/ecs/ecs.config",
                          attempts: int = 10, pause_seconds: int = 6) -> list[str]:
    """User-data lines that record the NVIDIA driver as ECS instance attributes.

    The image's CUDA needs a minimum driver (CUDA 13.0: 580); the ECS GPU AMI's driver
    is only known on the instance. The task definition is placed only where
    ``img2img.driver-ok`` is ``true``, so an AMI with an older driver shows up as a
    placement failure in the service's events, not as containers that crash. The version
    is kept only if it looks like one (attribute values have a restricted alphabet).
    """
    return [
        f"# img2img: NVIDIA driver >= {min_major}? Recorded as ECS instance attributes.",
        "img2img_driver=unknown",
        f"for img2img_try in $(seq 1 {attempts}); do",
        "  img2img_found=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader "
        "2>/dev/null | head -n 1 | tr -d '[:space:]')",
        "  case $img2img_found in",
        f"    ''|*[!0-9.]*) sleep {pause_seconds} ;;",
        "    *) img2img_driver=$img2img_found; break ;;",
        "  esac",
        "done",
        "img2img_major=${img2img_driver%%.*}",
        "case $img2img_major in",
        "  ''|*[!0-9]*) img2img_ok=false ;;",
        f"  *) if [ \"$img2img_major\" -ge {min_major} ]; then img2img_ok=true; "
        "else img2img_ok=false; fi ;;",
        "esac",
        f"echo \"ECS_INSTANCE_ATTRIBUTES={{\\\"{DRIVER_VERSION_ATTRIBUTE}\\\":"
        f"\\\"$img2img_driver\\\",\\\"{DRIVER_OK_ATTRIBUTE}\\\":\\\"$img2img_ok\\\"}}\" "
        f">> {ecs_config}",
        f"echo \"img2img: NVIDIA driver $img2img_driver (needs >= {min_major}): "
        f"{DRIVER_OK_ATTRIBUTE}=$img2img_ok\"",
    ]


def instance_memory_mib(instance_type: str) -> int | None:
    """Memory of a g5/g6/g6e size (``g5.xlarge`` 16 GiB, ``g6e.2xlarge`` 64 GiB), or None."""
    family, _, size = instance_type.partition(".")
    match = re.fullmatch(r"(\d*)xlarge", size)
    if family not in MEMORY_GIB_PER_XLARGE or not match:
        return None
    return MEMORY_GIB_PER_XLARGE[family] * int(match.group(1) or 1) * 1024


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    special = {"mib": "MiB", "gib": "GiB"}
    return head + "".join(special.get(p, p.capitalize()) for p in rest)


_CONVERT: Mapping[str, Callable[[Any], Any]] = {
    "spot": _bool,
    "instance_types": _str_list,
    "input_prefix": _prefix,
    "output_prefix": _prefix,
    "uploads_prefix": _prefix,
    "alarm_email": lambda v: str(v).strip(),
    "image_tag": lambda v: str(v).strip(),
    "default_models": lambda v: ",".join(_str_list(v)),
    "allowed_models": lambda v: ",".join(_str_list(v)),
    "models_uri": lambda v: _prefix(str(v).strip()) if str(v).strip() else "",
    **{name: int for name in (
        "max_tasks", "backlog_per_task", "max_receive_count", "visibility_timeout",
        "stop_timeout", "stop_deadline", "output_expiration_days",
        "oldest_message_alarm_seconds", "task_memory_mib", "task_memory_limit_mib",
        "task_cpu", "root_volume_gib", "max_azs", "min_driver_version",
        "log_retention_days")},
}

CONTEXT_KEYS: tuple[str, ...] = tuple(_camel(f.name) for f in fields(FleetConfig))


class Img2ImgFleetStack(Stack):
    """Bucket, job queue + DLQ, GPU ECS capacity, the worker service, scaling and alarms."""

    def __init__(self, scope: Construct, construct_id: str, *, config: FleetConfig,
                 **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config

        self.bucket = self._bucket()
        self.dlq, self.queue = self._queues()
        if config.uploads_prefix:
            # The worker turns ObjectCreated events into jobs (same queue, settings defaults).
            self.bucket.add_event_notification(
                s3.EventType.OBJECT_CREATED,
                s3n.SqsDestination(self.queue),
                s3.NotificationKeyFilter(prefix=config.uploads_prefix),
            )
        self.repository = ecr.Repository(
            self, "WorkerRepository",
            image_scan_on_push=True,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[ecr.LifecycleRule(
                description="keep the 20 newest images", max_image_count=20)],
        )
        if Token.is_unresolved(self.region):
            # Without an account and region CDK cannot look the AZs up and uses two.
            Annotations.of(self).add_warning_v2(
                "img2img:env-agnostic",
                "No account/region (CDK_DEFAULT_ACCOUNT/CDK_DEFAULT_REGION): the VPC spans "
                "2 AZs instead of maxAzs. Synthesize with AWS credentials to use more.")
        vpc = ec2.Vpc(
            self, "Vpc",
            # More AZs, more pools of GPU (and Spot) capacity to launch from.
            max_azs=config.max_azs,
            nat_gateways=0,  # public subnets, no inbound rules: no NAT hourly cost
            subnet_configuration=[ec2.SubnetConfiguration(
                name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=22)],
        )
        self.cluster, capacity_provider = self._cluster(vpc)
        self.task_role = self._task_role()
        self.service = self._service(capacity_provider)
        self._scaling()
        self._alarms()

        CfnOutput(self, "BucketName", value=self.bucket.bucket_name)
        CfnOutput(self, "QueueUrl", value=self.queue.queue_url)
        CfnOutput(self, "DlqUrl", value=self.dlq.queue_url)
        CfnOutput(self, "ClusterName", value=self.cluster.cluster_name)
        CfnOutput(self, "ServiceName", value=self.service.service_name)
        CfnOutput(self, "RepositoryUri", value=self.repository.repository_uri)
        CfnOutput(self, "LogGroupName", value=self.log_group.log_group_name)

    # -- storage and queues ------------------------------------------------------------

    def _bucket(self) -> s3.Bucket:
        cfg = self.config
        rules = [s3.LifecycleRule(
            id="abort-incomplete-uploads",
            abort_incomplete_multipart_upload_after=Duration.days(7))]
        if cfg.output_expiration_days:
            rules.append(s3.LifecycleRule(
                id="expire-outputs", prefix=cfg.output_prefix,
                expiration=Duration.days(cfg.output_expiration_days)))
        return s3.Bucket(
            self, "Bucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=rules,
            # Images are the customer's data: never deleted with the stack.
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _queues(self) -> tuple[sqs.Queue, sqs.Queue]:
        cfg = self.config
        # SSE-SQS (not KMS): S3 event notifications can deliver to it without a key policy.
        dlq = sqs.Queue(
            self, "DeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=DLQ_RETENTION,
        )
        queue = sqs.Queue(
            self, "JobQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(cfg.visibility_timeout),
            receive_message_wait_time=Duration.seconds(RECEIVE_WAIT_SECONDS),
            retention_period=Duration.days(4),
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=dlq, max_receive_count=cfg.max_receive_count),
        )
        return dlq, queue

    # -- compute -----------------------------------------------------------------------

    def _cluster(self, vpc: ec2.IVpc) -> tuple[ecs.Cluster, ecs.AsgCapacityProvider]:
        cfg = self.config
        # Container Insights publishes RunningTaskCount, which the scaling math divides by.
        cluster = ecs.Cluster(self, "Cluster", vpc=vpc,
                              container_insights_v2=ecs.ContainerInsights.ENABLED)
        security_group = ec2.SecurityGroup(
            self, "InstanceSecurityGroup", vpc=vpc, allow_all_outbound=True,
            description="GPU workers: outbound only (S3, SQS, ECR, model hub)")
        instance_role = iam.Role(
            self, "InstanceRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(
                "AmazonSSMManagedInstanceCore")])
        user_data = ec2.UserData.for_linux()
        user_data.add_commands(*driver_check_commands(cfg.min_driver_version))
        if cfg.spot:
            # CDK sets this only for spotPrice groups; a mixed-instances group needs it here.
            # On the 2-minute interruption notice ECS drains the instance: SIGTERM, then
            # the worker releases its messages within its stop deadline.
            user_data.add_commands(
                "echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config")
            # The agent sets its own instance DRAINING with the instance role; CDK's inline
            # instance policy (unlike AmazonEC2ContainerServiceforEC2Role) lacks this action.
            instance_role.add_to_policy(iam.PolicyStatement(
                sid="SpotInstanceDraining",
                actions=["ecs:UpdateContainerInstancesState"],
                resources=[self.format_arn(service="ecs", resource="container-instance",
                                           resource_name="*")],
                conditions={"ArnEquals": {"ecs:cluster": cluster.cluster_arn}}))
        launch_template = ec2.LaunchTemplate(
            self, "GpuLaunchTemplate",
            machine_image=ecs.EcsOptimizedImage.amazon_linux2023(ecs.AmiHardwareType.GPU),
            instance_type=ec2.InstanceType(cfg.instance_types[0]),
            user_data=user_data,
            role=instance_role,
            security_group=security_group,
            require_imdsv2=True,
            # Hop limit 1: containers (bridge network) cannot reach the instance's role.
            http_put_response_hop_limit=1,
            block_devices=[ec2.BlockDevice(
                device_name="/dev/xvda",
                volume=ec2.BlockDeviceVolume.ebs(
                    cfg.root_volume_gib, volume_type=ec2.EbsDeviceVolumeType.GP3,
                    encrypted=True, delete_on_termination=True))],
        )
        on_demand_percent = 0 if cfg.spot else 100
        asg = autoscaling.AutoScalingGroup(
            self, "GpuAsg",
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            min_capacity=0,
            # One GPU task per instance (xlarge sizes have one GPU).
            max_capacity=cfg.max_tasks,
            mixed_instances_policy=autoscaling.MixedInstancesPolicy(
                launch_template=launch_template,
                launch_template_overrides=[
                    autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t))
                    for t in cfg.instance_types],
                instances_distribution=autoscaling.InstancesDistribution(
                    on_demand_base_capacity=0,
                    on_demand_percentage_above_base_capacity=on_demand_percent,
                    on_demand_allocation_strategy=(
                        autoscaling.OnDemandAllocationStrategy.PRIORITIZED),
                    spot_allocation_strategy=(
                        autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED),
                ),
            ),
            capacity_rebalance=cfg.spot,
        )
        capacity_provider = ecs.AsgCapacityProvider(
            self, "GpuCapacityProvider",
            auto_scaling_group=asg,
            enable_managed_scaling=True,
            enable_managed_termination_protection=True,
            enable_managed_draining=True,
            target_capacity_percent=100,
            machine_image_type=ecs.MachineImageType.AMAZON_LINUX_2,
        )
        cluster.add_asg_capacity_provider(capacity_provider)
        # Teardown needs it: instances must be unprotected before the group can empty.
        CfnOutput(self, "AutoScalingGroupName", value=asg.auto_scaling_group_name)
        return cluster, capacity_provider

    def _task_role(self) -> iam.Role:
        """Read inputs, write outputs, consume its own queue: nothing else."""
        cfg = self.config
        role = iam.Role(self, "WorkerTaskRole",
                        assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
                        description="img2img worker: read inputs, write outputs, own queue")
        read_prefixes = [cfg.input_prefix] + ([cfg.uploads_prefix] if cfg.uploads_prefix else [])
        role.add_to_policy(iam.PolicyStatement(
            sid="ReadInputs", actions=["s3:GetObject"],
            resources=[self.bucket.arn_for_objects(f"{p}*") for p in read_prefixes]))
        role.add_to_policy(iam.PolicyStatement(
            sid="WriteOutputs", actions=["s3:PutObject"],
            resources=[self.bucket.arn_for_objects(f"{cfg.output_prefix}*")]))
        # The worker reads its own result records to acknowledge duplicate deliveries.
        role.add_to_policy(iam.PolicyStatement(
            sid="ReadResults", actions=["s3:GetObject"],
            resources=[self.bucket.arn_for_objects(f"{cfg.output_prefix}*")]))
        # Without ListBucket a missing key answers 403, not 404: the worker could not
        # tell "no result yet" or "input deleted" from "access denied".
        role.add_to_policy(iam.PolicyStatement(
            sid="ListOwnPrefixes", actions=["s3:ListBucket"],
            resources=[self.bucket.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [
                f"{p}*" for p in [*read_prefixes, cfg.output_prefix]]}}))
        if cfg.models_uri:
            bucket, _, prefix = cfg.models_uri.removeprefix("s3://").partition("/")
            bucket_arn = f"arn:{Aws.PARTITION}:s3:::{bucket}"
            role.add_to_policy(iam.PolicyStatement(
                sid="ReadModels", actions=["s3:GetObject"],
                resources=[f"{bucket_arn}/{prefix}*"]))
            # The worker lists the prefix to sync a model folder into its cache.
            role.add_to_policy(iam.PolicyStatement(
                sid="ListModels", actions=["s3:ListBucket"], resources=[bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}}))
        # Batch variants (DeleteMessageBatch, ...) are authorised by the same actions.
        role.add_to_policy(iam.PolicyStatement(
            sid="ConsumeJobQueue",
            actions=["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"],
            resources=[self.queue.queue_arn]))
        # Scale-in protection: the ECS agent's endpoint calls these with the task role's
        # credentials, so without them protection is denied and busy tasks can be stopped.
        role.add_to_policy(iam.PolicyStatement(
            sid="OwnTaskProtection",
            actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"],
            resources=[self.format_arn(service="ecs", resource="task",
                                       resource_name=f"{self.cluster.cluster_name}/*")]))
        return role

    def _service(self, capacity_provider: ecs.AsgCapacityProvider) -> ecs.Ec2Service:
        cfg = self.config
        self.log_group = logs.LogGroup(
            self, "WorkerLogs",
            retention=LOG_RETENTION[cfg.log_retention_days],
            removal_policy=RemovalPolicy.DESTROY,
        )
        task_definition = ecs.Ec2TaskDefinition(
            self, "WorkerTask",
            network_mode=ecs.NetworkMode.BRIDGE,
            task_role=self.task_role,
            # Only on instances whose NVIDIA driver runs the image's CUDA (user data).
            placement_constraints=[ecs.PlacementConstraint.member_of(
                f"attribute:{DRIVER_OK_ATTRIBUTE} == true")],
            volumes=[ecs.Volume(
                name="models",
                # One Docker volume per instance, shared by its tasks: weights survive
                # task restarts; a new volume is seeded from the image's /models.
                docker_volume_configuration=ecs.DockerVolumeConfiguration(
                    scope=ecs.Scope.SHARED, autoprovision=True, driver="local"))],
        )
        allowed_inputs = [self._s3_uri(cfg.input_prefix)]
        if cfg.uploads_prefix:
            allowed_inputs.append(self._s3_uri(cfg.uploads_prefix))
        container = task_definition.add_container(
            CONTAINER_NAME,
            image=ecs.ContainerImage.from_ecr_repository(self.repository, cfg.image_tag),
            essential=True,
            gpu_count=1,
            cpu=cfg.task_cpu,
            # Placement reserves the soft value; the hard limit keeps a runaway process from
            # taking the host (and its ECS agent) down with it: the kernel kills the task.
            memory_reservation_mib=cfg.task_memory_mib,
            memory_limit_mib=cfg.task_memory_limit_mib,
            user=WORKER_USER,
            readonly_root_filesystem=True,
            stop_timeout=Duration.seconds(cfg.stop_timeout),
            linux_parameters=self._linux_parameters(),
            health_check=ecs.HealthCheck(
                command=["CMD", "img2img-worker", "healthcheck"],
                interval=Duration.seconds(30),
                timeout=Duration.seconds(10),
                retries=3,
                # Model download + load can take minutes on a fresh instance.
                start_period=Duration.seconds(ECS_MAX_HEALTH_START_PERIOD),
            ),
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix="worker", log_group=self.log_group,
                mode=ecs.AwsLogDriverMode.NON_BLOCKING),
            environment={
                "AWS_REGION": Aws.REGION,
                "IMG2IMG_QUEUE_URL": self.queue.queue_url,
                "IMG2IMG_ALLOWED_INPUTS": ",".join(allowed_inputs),
                "IMG2IMG_ALLOWED_OUTPUTS": self._s3_uri(cfg.output_prefix),
                "IMG2IMG_EVENT_OUTPUT_PREFIX": cfg.output_prefix,
                "IMG2IMG_DEFAULT_MODELS": cfg.default_models,
                "IMG2IMG_DEVICE": "cuda",
                "IMG2IMG_VISIBILITY_TIMEOUT": str(cfg.visibility_timeout),
                "IMG2IMG_STOP_DEADLINE": str(cfg.stop_deadline),
                "IMG2IMG_RECEIVE_WAIT_SECONDS": str(RECEIVE_WAIT_SECONDS),
                # The image's home is on the read-only root: libraries that cache under ~
                # (Triton's kernel cache, for torch.compile) write to the tmpfs instead.
                "HOME": TMP_MOUNT,
                "HF_HOME": f"{MODELS_MOUNT}/huggingface",
                "IMG2IMG_MODEL_CACHE": f"{MODELS_MOUNT}/img2img",
                **({"IMG2IMG_ALLOWED_MODELS": cfg.worker_allowed_models}
                   if cfg.worker_allowed_models else {}),
            },
        )
        container.add_mount_points(ecs.MountPoint(
            container_path=MODELS_MOUNT, source_volume="models", read_only=False))

        service = ecs.Ec2Service(
            self, "WorkerService",
            cluster=self.cluster,
            task_definition=task_definition,
            # Scaling owns the count; it starts at zero and follows the queue.
            desired_count=0,
            # Draining (a Spot notice) stops a task only once its replacement runs if this
            # is 100%, and a replacement needs a new GPU instance: minutes, past the notice.
            # On-demand keeps 100% so deployments start new tasks before stopping old ones.
            min_healthy_percent=0 if cfg.spot else 100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            capacity_provider_strategies=[ecs.CapacityProviderStrategy(
                capacity_provider=capacity_provider.capacity_provider_name, weight=1)],
        )
        # The service may only be created once the capacity provider is associated with
        # the cluster; CDK adds that association (under the cluster) only at synth time,
        # so depend on the whole cluster construct.
        service.node.add_dependency(self.cluster)
        return service

    def _linux_parameters(self) -> ecs.LinuxParameters:
        linux = ecs.LinuxParameters(self, "WorkerLinux", init_process_enabled=True,
                                    shared_memory_size=SHARED_MEMORY_MIB)
        # Docker mounts a tmpfs noexec unless told otherwise; torch.compile loads the
        # kernels it builds from here, so this one allows exec (never setuid or devices).
        linux.add_tmpfs(ecs.Tmpfs(
            container_path=TMP_MOUNT, size=TMP_SIZE_MIB,
            mount_options=[ecs.TmpfsMountOption.EXEC, ecs.TmpfsMountOption.NOSUID,
                           ecs.TmpfsMountOption.NODEV]))
        return linux

    def _s3_uri(self, prefix: str) -> str:
        return f"s3://{self.bucket.bucket_name}/{prefix}"

    # -- scaling -----------------------------------------------------------------------

    def _queue_metric(self, name: str, queue: sqs.IQueue, stat: str = "Sum") -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace="AWS/SQS", metric_name=name,
            dimensions_map={"QueueName": queue.queue_name},
            statistic=stat, period=Duration.minutes(1))

    def _service_metric(self, name: str) -> cloudwatch.Metric:
        return cloudwatch.Metric(
            namespace="ECS/ContainerInsights", metric_name=name,
            dimensions_map={"ClusterName": self.cluster.cluster_name,
                            "ServiceName": self.service.service_name},
            statistic="Average", period=Duration.minutes(1))

    def _scaling(self) -> None:
        cfg = self.config
        target = appscaling.ScalableTarget(
            self, "WorkerScalableTarget",
            service_namespace=appscaling.ServiceNamespace.ECS,
            resource_id=f"service/{self.cluster.cluster_name}/{self.service.service_name}",
            scalable_dimension="ecs:service:DesiredCount",
            min_capacity=0,
            max_capacity=cfg.max_tasks,
        )
        self.scalable_target = target

        # Target tracking on backlog per task. In-flight messages count as backlog so the
        # fleet does not scale in (and SIGTERM) workers that are still busy with them.
        def query(metric_id: str, namespace: str, name: str, dims: dict[str, str],
                  stat: str) -> appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty:
            return appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
                id=metric_id, return_data=False,
                metric_stat=appscaling.CfnScalingPolicy.TargetTrackingMetricStatProperty(
                    stat=stat,
                    metric=appscaling.CfnScalingPolicy.TargetTrackingMetricProperty(
                        namespace=namespace, metric_name=name,
                        dimensions=[
                            appscaling.CfnScalingPolicy.TargetTrackingMetricDimensionProperty(
                                name=k, value=v) for k, v in dims.items()])))

        queue_dims = {"QueueName": self.queue.queue_name}
        service_dims = {"ClusterName": self.cluster.cluster_name,
                        "ServiceName": self.service.service_name}
        appscaling.CfnScalingPolicy(
            self, "BacklogPerTaskPolicy",
            policy_name=f"{Aws.STACK_NAME}-backlog-per-task",
            policy_type="TargetTrackingScaling",
            scaling_target_id=target.scalable_target_id,
            target_tracking_scaling_policy_configuration=(
                appscaling.CfnScalingPolicy.TargetTrackingScalingPolicyConfigurationProperty(
                    target_value=cfg.backlog_per_task,
                    scale_out_cooldown=60,
                    scale_in_cooldown=300,
                    customized_metric_specification=(
                        appscaling.CfnScalingPolicy.CustomizedMetricSpecificationProperty(
                            metrics=[
                                query("visible", "AWS/SQS",
                                      "ApproximateNumberOfMessagesVisible", queue_dims, "Sum"),
                                query("inflight", "AWS/SQS",
                                      "ApproximateNumberOfMessagesNotVisible", queue_dims, "Sum"),
                                query("running", "ECS/ContainerInsights", "RunningTaskCount",
                                      service_dims, "Average"),
                                appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
                                    id="backlogpertask",
                                    expression="(visible + inflight) / running",
                                    label="Messages (visible + in flight) per running task",
                                    return_data=True),
                            ])),
                )),
        )

        # From zero: with no task, RunningTaskCount is missing and the ratio above has no
        # value, so target tracking cannot act. This alarm starts the first task.
        # CloudWatch repeats an Application Auto Scaling alarm action every period while
        # the alarm stays in ALARM, and the first task stays PENDING for minutes while a
        # GPU instance boots: the action must be idempotent (desired count exactly 1),
        # never "+1", which would climb towards maxTasks before anything runs. The guard
        # on DesiredTaskCount only narrows when it fires; nothing relies on Container
        # Insights publishing it while the task is pending.
        start_from_zero = cloudwatch.Alarm(
            self, "StartFromZeroAlarm",
            alarm_description="Jobs are waiting and no worker task runs or is wanted",
            metric=cloudwatch.MathExpression(
                expression="IF(visible > 0 AND FILL(running, 0) == 0 AND FILL(desired, 0) == 0,"
                           " 1, 0)",
                using_metrics={
                    "visible": self._queue_metric(
                        "ApproximateNumberOfMessagesVisible", self.queue, "Maximum"),
                    "running": self._service_metric("RunningTaskCount"),
                    "desired": self._service_metric("DesiredTaskCount"),
                },
                label="Waiting jobs with no worker",
                period=Duration.minutes(1),
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        start = appscaling.StepScalingAction(
            self, "StartFromZeroAction",
            scaling_target=target,
            adjustment_type=appscaling.AdjustmentType.EXACT_CAPACITY,
            cooldown=Duration.minutes(2),
        )
        start.add_adjustment(adjustment=1, lower_bound=0)
        start_from_zero.add_alarm_action(cw_actions.ApplicationScalingAction(start))

    # -- alarms ------------------------------------------------------------------------

    def _alarms(self) -> None:
        cfg = self.config
        self.alarm_topic = sns.Topic(self, "AlarmTopic", display_name="img2img fleet alarms")
        if cfg.alarm_email:
            self.alarm_topic.add_subscription(subs.EmailSubscription(cfg.alarm_email))
        notify = cw_actions.SnsAction(self.alarm_topic)

        dlq_alarm = cloudwatch.Alarm(
            self, "DlqNotEmptyAlarm",
            alarm_description="Jobs reached the dead-letter queue: inspect, fix, then "
                              "`img2img-producer redrive`",
            metric=self._queue_metric("ApproximateNumberOfMessagesVisible", self.dlq, "Maximum"),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        age_alarm = cloudwatch.Alarm(
            self, "OldestMessageAgeAlarm",
            alarm_description=f"A job has waited more than {cfg.oldest_message_alarm_seconds} s",
            metric=self._queue_metric("ApproximateAgeOfOldestMessage", self.queue, "Maximum"),
            threshold=cfg.oldest_message_alarm_seconds,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=5,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        # The worker emits this EMF metric on every failed call to the agent's task
        # protection endpoint (worker/task_protection.py): scale-in may stop busy tasks.
        protection_alarm = cloudwatch.Alarm(
            self, "TaskProtectionFailingAlarm",
            alarm_description="Workers cannot set ECS task scale-in protection (see the "
                              "worker logs: denied = the task role lacks "
                              "ecs:UpdateTaskProtection)",
            metric=cloudwatch.Metric(
                namespace=WORKER_METRICS_NAMESPACE, metric_name=PROTECTION_FAILURE_METRIC,
                statistic="Sum", period=Duration.minutes(5)),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        for alarm in (dlq_alarm, age_alarm, protection_alarm):
            alarm.add_alarm_action(notify)
        CfnOutput(self, "AlarmTopicArn", value=self.alarm_topic.topic_arn)
