"""GPU capacity: the VPC, the ECS cluster and its Auto Scaling group of GPU instances.

Each instance checks its NVIDIA driver at boot (``driver_check_commands``) and, on Spot,
lets the ECS agent drain it on the interruption notice.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Annotations, Stack, Token
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam

from infra.config import FleetConfig

ECS_CONFIG = "/etc/ecs/ecs.config"
# ECS instance attributes the user data sets from nvidia-smi; tasks need driver-ok.
DRIVER_VERSION_ATTRIBUTE = "img2img.nvidia-driver"
DRIVER_OK_ATTRIBUTE = "img2img.driver-ok"
DRIVER_OK_CONSTRAINT = f"attribute:{DRIVER_OK_ATTRIBUTE} == true"
# The root volume takes the image pull (gigabytes, then unpacked into many files) on every
# new instance. gp3's baseline is 3000 IOPS and 125 MiB/s; these are billed above it.
ROOT_VOLUME_IOPS = 4000
ROOT_VOLUME_THROUGHPUT_MIBPS = 400


@dataclass(frozen=True)
class GpuCapacity:
    vpc: ec2.Vpc
    cluster: ecs.Cluster
    provider: ecs.AsgCapacityProvider
    auto_scaling_group: autoscaling.AutoScalingGroup
    launch_template: ec2.LaunchTemplate
    instance_role: iam.Role


def gpu_capacity(stack: Stack, config: FleetConfig) -> GpuCapacity:
    vpc = _public_vpc(stack, config)
    # Container Insights publishes RunningTaskCount, which the scaling math divides by.
    cluster = ecs.Cluster(stack, "Cluster", vpc=vpc,
                          container_insights_v2=ecs.ContainerInsights.ENABLED)
    asg, launch_template, instance_role = _gpu_instances(stack, config, vpc, cluster)
    provider = ecs.AsgCapacityProvider(
        stack, "GpuCapacityProvider",
        auto_scaling_group=asg,
        enable_managed_scaling=True,
        enable_managed_termination_protection=True,
        enable_managed_draining=True,
        target_capacity_percent=100,
        machine_image_type=ecs.MachineImageType.AMAZON_LINUX_2,  # ecs.config user data
    )
    cluster.add_asg_capacity_provider(provider)
    return GpuCapacity(vpc=vpc, cluster=cluster, provider=provider, auto_scaling_group=asg,
                       launch_template=launch_template, instance_role=instance_role)


def _public_vpc(stack: Stack, config: FleetConfig) -> ec2.Vpc:
    if Token.is_unresolved(stack.region):
        # Without an account and region CDK cannot look the AZs up and uses two.
        Annotations.of(stack).add_warning_v2(
            "img2img:env-agnostic",
            "No account/region (CDK_DEFAULT_ACCOUNT/CDK_DEFAULT_REGION): the VPC spans "
            "2 AZs instead of maxAzs. Synthesize with AWS credentials to use more.")
    return ec2.Vpc(
        stack, "Vpc",
        # More AZs, more pools of GPU (and Spot) capacity to launch from.
        max_azs=config.max_azs,
        nat_gateways=0,  # public subnets, no inbound rules: no NAT hourly cost
        subnet_configuration=[ec2.SubnetConfiguration(
            name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=22)],
    )


def _gpu_instances(stack: Stack, config: FleetConfig, vpc: ec2.IVpc, cluster: ecs.Cluster,
                   ) -> tuple[autoscaling.AutoScalingGroup, ec2.LaunchTemplate, iam.Role]:
    security_group = ec2.SecurityGroup(
        stack, "InstanceSecurityGroup", vpc=vpc, allow_all_outbound=True,
        description="GPU workers: outbound only (S3, SQS, ECR, model hub)")
    instance_role = iam.Role(
        stack, "InstanceRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
        managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(
            "AmazonSSMManagedInstanceCore")])
    user_data = ec2.UserData.for_linux()
    user_data.add_commands(*driver_check_commands(config.min_driver_version))
    if config.spot:
        _enable_spot_draining(stack, user_data, instance_role, cluster)
    launch_template = ec2.LaunchTemplate(
        stack, "GpuLaunchTemplate",
        machine_image=ecs.EcsOptimizedImage.amazon_linux2023(ecs.AmiHardwareType.GPU),
        instance_type=ec2.InstanceType(config.instance_types[0]),
        user_data=user_data,
        role=instance_role,
        security_group=security_group,
        require_imdsv2=True,
        # Hop limit 1: containers (bridge network) cannot reach the instance's role.
        http_put_response_hop_limit=1,
        block_devices=[ec2.BlockDevice(
            device_name="/dev/xvda",
            volume=ec2.BlockDeviceVolume.ebs(
                config.root_volume_gib, volume_type=ec2.EbsDeviceVolumeType.GP3,
                iops=ROOT_VOLUME_IOPS, throughput=ROOT_VOLUME_THROUGHPUT_MIBPS,
                encrypted=True, delete_on_termination=True))],
    )
    # A warm pool takes no mixed-instances policy: the group launches the first type.
    launch = ({"launch_template": launch_template} if config.warm_pool_size else
              {"mixed_instances_policy": _mixed_instances(config, launch_template)})
    group = autoscaling.AutoScalingGroup(
        stack, "GpuAsg",
        vpc=vpc,
        vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
        min_capacity=0,
        # One GPU task per instance (xlarge sizes have one GPU).
        max_capacity=config.max_tasks,
        capacity_rebalance=config.spot,
        **launch,
    )
    return group, launch_template, instance_role


def _mixed_instances(config: FleetConfig,
                     launch_template: ec2.LaunchTemplate) -> autoscaling.MixedInstancesPolicy:
    return autoscaling.MixedInstancesPolicy(
        launch_template=launch_template,
        launch_template_overrides=[
            autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t))
            for t in config.instance_types],
        instances_distribution=autoscaling.InstancesDistribution(
            on_demand_base_capacity=0,
            on_demand_percentage_above_base_capacity=0 if config.spot else 100,
            on_demand_allocation_strategy=(
                autoscaling.OnDemandAllocationStrategy.PRIORITIZED),
            spot_allocation_strategy=(
                autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED),
        ),
    )


def _enable_spot_draining(stack: Stack, user_data: ec2.UserData, instance_role: iam.Role,
                          cluster: ecs.ICluster) -> None:
    # CDK sets this only for spotPrice groups; a mixed-instances group needs it here.
    # On the 2-minute interruption notice ECS drains the instance: SIGTERM, then the
    # worker releases its messages within its stop deadline.
    user_data.add_commands(f"echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> {ECS_CONFIG}")
    # The agent sets its own instance DRAINING with the instance role; CDK's inline
    # instance policy (unlike AmazonEC2ContainerServiceforEC2Role) lacks this action.
    instance_role.add_to_policy(iam.PolicyStatement(
        sid="SpotInstanceDraining",
        actions=["ecs:UpdateContainerInstancesState"],
        resources=[stack.format_arn(service="ecs", resource="container-instance",
                                    resource_name="*")],
        conditions={"ArnEquals": {"ecs:cluster": cluster.cluster_arn}}))


def driver_check_commands(min_major: int, *, ecs_config: str = ECS_CONFIG,
                          attempts: int = 10, pause_seconds: int = 6) -> list[str]:
    """User-data lines that record the NVIDIA driver as ECS instance attributes.

    The image's CUDA needs a minimum driver (CUDA 13.0: 580); the ECS GPU AMI's driver
    is only known on the instance. The task definition is placed only where
    ``img2img.driver-ok`` is ``true``, so an AMI with an older driver shows up as a
    placement failure in the service's events, not as containers that crash. The version
    is kept only if it looks like one (attribute values have a restricted alphabet).
    """
    attributes = (f'{{\\"{DRIVER_VERSION_ATTRIBUTE}\\":\\"$img2img_driver\\",'
                  f'\\"{DRIVER_OK_ATTRIBUTE}\\":\\"$img2img_ok\\"}}')
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
        f'  *) if [ "$img2img_major" -ge {min_major} ]; then img2img_ok=true; '
        "else img2img_ok=false; fi ;;",
        "esac",
        f'echo "ECS_INSTANCE_ATTRIBUTES={attributes}" >> {ecs_config}',
        f'echo "img2img: NVIDIA driver $img2img_driver (needs >= {min_major}): '
        f'{DRIVER_OK_ATTRIBUTE}=$img2img_ok"',
    ]
