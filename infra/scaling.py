"""Scaling the worker service on queue depth, from zero tasks to ``maxTasks``."""

from __future__ import annotations

from aws_cdk import Aws, Duration
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import FleetConfig
from infra.metrics import (
    CONTAINER_INSIGHTS_NAMESPACE,
    SQS_NAMESPACE,
    queue_metric,
    service_dimensions,
    service_metric,
)
from infra.queues import JobQueues
from infra.scaling_policy import (
    MIN_TASKS,
    START_ALARM_EVALUATION_PERIODS,
    START_ALARM_PERIOD_SECONDS,
    START_COOLDOWN_SECONDS,
    TRACKING_SCALE_IN_COOLDOWN_SECONDS,
    TRACKING_SCALE_OUT_COOLDOWN_SECONDS,
    start_task_counts,
)

_Query = appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty
ECS_AUTOSCALING_ROLE = ("aws-service-role/ecs.application-autoscaling.amazonaws.com/"
                        "AWSServiceRoleForApplicationAutoScaling_ECSService")


def scale_on_queue_depth(scope: Construct, config: FleetConfig, *, queues: JobQueues,
                         cluster: ecs.ICluster,
                         service: ecs.IService) -> appscaling.ScalableTarget:
    target = appscaling.ScalableTarget(
        scope, "WorkerScalableTarget",
        service_namespace=appscaling.ServiceNamespace.ECS,
        resource_id=f"service/{cluster.cluster_name}/{service.service_name}",
        scalable_dimension="ecs:service:DesiredCount",
        # Application Auto Scaling acts on ECS services through its service-linked role
        # (created with the first scalable target); without this CDK adds an empty role.
        role=iam.Role.from_role_arn(
            scope, "EcsAutoScalingServiceLinkedRole",
            f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:role/{ECS_AUTOSCALING_ROLE}",
            mutable=False),
        min_capacity=MIN_TASKS,
        max_capacity=config.max_tasks,
    )
    _track_backlog_per_task(scope, config, target, queues, cluster, service)
    _start_from_zero(scope, config, target, queues, cluster, service)
    return target


def start_tiers(backlog_per_task: int, max_tasks: int) -> list[tuple[int, int | None, int]]:
    """(lower, upper, tasks) step bounds over ``waiting - 1`` (the alarm's threshold is
    1): ``waiting`` jobs get the smallest of ``start_task_counts`` that is at least
    ceil(waiting / backlog_per_task); the last tier has no upper bound."""
    counts = start_task_counts(max_tasks)
    tiers: list[tuple[int, int | None, int]] = []
    for i, tasks in enumerate(counts):
        lower = 0 if i == 0 else counts[i - 1] * backlog_per_task
        upper = None if i == len(counts) - 1 else tasks * backlog_per_task
        tiers.append((lower, upper, tasks))
    return tiers


def _query(metric_id: str, namespace: str, name: str, dimensions: dict[str, str],
           stat: str) -> _Query:
    return _Query(
        id=metric_id, return_data=False,
        metric_stat=appscaling.CfnScalingPolicy.TargetTrackingMetricStatProperty(
            stat=stat,
            metric=appscaling.CfnScalingPolicy.TargetTrackingMetricProperty(
                namespace=namespace, metric_name=name,
                dimensions=[appscaling.CfnScalingPolicy.TargetTrackingMetricDimensionProperty(
                    name=k, value=v) for k, v in dimensions.items()])))


def queue_metric_ids(queues: JobQueues) -> list[tuple[str, sqs.IQueue]]:
    """(metric id prefix, queue) for every queue the worker consumes."""
    prefixes = {id(queues.main): "", id(queues.priority): "priority"}
    return [(prefixes[id(q)], q) for q in queues.consumed]


def _track_backlog_per_task(scope: Construct, config: FleetConfig,
                            target: appscaling.ScalableTarget, queues: JobQueues,
                            cluster: ecs.ICluster, service: ecs.IService) -> None:
    """Target tracking on backlog per running task, over every queue the worker consumes.

    In-flight messages count as backlog so the fleet does not scale in (and SIGTERM)
    workers that are still busy with them. A queue with no recent traffic publishes no
    metrics, and one missing term would blank the whole sum: each is FILLed with 0.
    """
    metrics: list[_Query] = []
    terms: list[str] = []
    for prefix, queue in queue_metric_ids(queues):
        dims = {"QueueName": queue.queue_name}
        for suffix, name in (("visible", "ApproximateNumberOfMessagesVisible"),
                             ("inflight", "ApproximateNumberOfMessagesNotVisible")):
            metrics.append(_query(prefix + suffix, SQS_NAMESPACE, name, dims, "Sum"))
            terms.append(f"FILL({prefix + suffix}, 0)")
    metrics += [
        _query("running", CONTAINER_INSIGHTS_NAMESPACE, "RunningTaskCount",
               service_dimensions(cluster, service), "Average"),
        _Query(id="backlogpertask", expression=f"({' + '.join(terms)}) / running",
               label="Messages (visible + in flight) per running task", return_data=True),
    ]
    appscaling.CfnScalingPolicy(
        scope, "BacklogPerTaskPolicy",
        policy_name=f"{Aws.STACK_NAME}-backlog-per-task",
        policy_type="TargetTrackingScaling",
        scaling_target_id=target.scalable_target_id,
        target_tracking_scaling_policy_configuration=(
            appscaling.CfnScalingPolicy.TargetTrackingScalingPolicyConfigurationProperty(
                target_value=config.backlog_per_task,
                scale_out_cooldown=TRACKING_SCALE_OUT_COOLDOWN_SECONDS,
                scale_in_cooldown=TRACKING_SCALE_IN_COOLDOWN_SECONDS,
                customized_metric_specification=(
                    appscaling.CfnScalingPolicy.CustomizedMetricSpecificationProperty(
                        metrics=metrics)),
            )),
    )


def _start_from_zero(scope: Construct, config: FleetConfig,
                     target: appscaling.ScalableTarget, queues: JobQueues,
                     cluster: ecs.ICluster, service: ecs.IService) -> None:
    """With no task, RunningTaskCount is missing and the backlog ratio has no value, so
    target tracking cannot act; this alarm starts the first task.

    CloudWatch repeats an Application Auto Scaling alarm action every period while the
    alarm stays in ALARM, and the first task stays PENDING for minutes while a GPU
    instance boots: the action must be idempotent (an exact desired count), never "+1",
    which would climb towards maxTasks before anything runs. The alarm's value is the
    number of jobs waiting (0 while a task runs or is wanted), and its ExactCapacity
    tiers set the tasks that backlog needs (``start_tiers``). The guard on
    DesiredTaskCount only narrows when it fires; nothing relies on Container Insights
    publishing it while the task is pending.
    """
    waiting = {f"{prefix}visible": queue_metric(queue, "ApproximateNumberOfMessagesVisible",
                                                "Maximum")
               for prefix, queue in queue_metric_ids(queues)}
    any_waiting = " + ".join(f"FILL({metric_id}, 0)" for metric_id in waiting)
    alarm = cloudwatch.Alarm(
        scope, "StartFromZeroAlarm",
        alarm_description="Jobs are waiting and no worker task runs or is wanted",
        metric=cloudwatch.MathExpression(
            expression=f"IF(({any_waiting}) > 0 AND FILL(running, 0) == 0 AND "
                       f"FILL(desired, 0) == 0, {any_waiting}, 0)",
            using_metrics={
                **waiting,
                "running": service_metric(cluster, service, "RunningTaskCount"),
                "desired": service_metric(cluster, service, "DesiredTaskCount"),
            },
            label="Waiting jobs with no worker",
            period=Duration.seconds(START_ALARM_PERIOD_SECONDS),
        ),
        threshold=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluation_periods=START_ALARM_EVALUATION_PERIODS,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
    )
    start = appscaling.StepScalingAction(
        scope, "StartFromZeroAction",
        scaling_target=target,
        adjustment_type=appscaling.AdjustmentType.EXACT_CAPACITY,
        cooldown=Duration.seconds(START_COOLDOWN_SECONDS),
    )
    for lower, upper, tasks in start_tiers(config.backlog_per_task, config.max_tasks):
        start.add_adjustment(adjustment=tasks, lower_bound=lower, upper_bound=upper)
    alarm.add_alarm_action(cw_actions.ApplicationScalingAction(start))
