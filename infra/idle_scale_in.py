"""The idle alarm: nothing waiting and nothing in flight scales the fleet to zero at once.

Target tracking scales in only after 15 one-minute datapoints below its target, and the
capacity provider terminates an instance only after 15 more (its own low alarm, which
ECS does not let us change). After a burst that is half an hour of idle GPUs. This
alarm fires after ``IDLE_ALARM_EVALUATION_PERIODS`` minute(s) with no job visible or
in flight on any consumed queue while tasks are wanted, and sets

- the service to exactly 0 tasks (an Application Auto Scaling step action), and
- the GPU Auto Scaling group to exactly 0 instances (an EC2 Auto Scaling step policy).

Nothing busy is stopped: a worker holding a job has ECS task protection (the service's
scale-in skips it), and an instance still running a task keeps its scale-in protection
(managed termination protection); ECS lifts that once the task has stopped, and the
group, already at 0, terminates the instance then.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ecs as ecs
from constructs import Construct

from infra.metrics import queue_metric, service_metric
from infra.queues import JobQueues
from infra.scaling import queue_metric_ids
from infra.scaling_policy import (
    IDLE_ALARM_EVALUATION_PERIODS,
    IDLE_ALARM_PERIOD_SECONDS,
    IDLE_COOLDOWN_SECONDS,
    MIN_TASKS,
    RELEASE_INSTANCES_WHEN_IDLE,
)


@dataclass(frozen=True)
class IdleScaleIn:
    alarm: cloudwatch.Alarm
    service_action: appscaling.StepScalingAction
    group_action: autoscaling.StepScalingAction | None


def idle_scale_in(scope: Construct, *, queues: JobQueues, cluster: ecs.ICluster,
                  service: ecs.IService, target: appscaling.ScalableTarget,
                  group: autoscaling.IAutoScalingGroup) -> IdleScaleIn:
    alarm = cloudwatch.Alarm(
        scope, "IdleAlarm",
        alarm_description="Nothing waiting or in flight on the job queues while worker "
                          "tasks are wanted: scale the service and the GPU group to 0",
        metric=_idle_expression(queues, cluster, service),
        threshold=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluation_periods=IDLE_ALARM_EVALUATION_PERIODS,
        datapoints_to_alarm=IDLE_ALARM_EVALUATION_PERIODS,
        # A missing main-queue datapoint (late SQS metrics) is not evidence of an empty
        # queue: the expression has no value then, and that never scales in.
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
    )
    to_zero = appscaling.StepScalingAction(
        scope, "IdleToZeroAction", scaling_target=target,
        adjustment_type=appscaling.AdjustmentType.EXACT_CAPACITY,
        cooldown=Duration.seconds(IDLE_COOLDOWN_SECONDS))
    to_zero.add_adjustment(adjustment=MIN_TASKS, lower_bound=0)
    alarm.add_alarm_action(cw_actions.ApplicationScalingAction(to_zero))
    group_action = None
    if RELEASE_INSTANCES_WHEN_IDLE:
        group_action = autoscaling.StepScalingAction(
            scope, "IdleGroupToZeroAction", auto_scaling_group=group,
            adjustment_type=autoscaling.AdjustmentType.EXACT_CAPACITY)
        group_action.add_adjustment(adjustment=0, lower_bound=0)
        alarm.add_alarm_action(cw_actions.AutoScalingAction(group_action))
    return IdleScaleIn(alarm=alarm, service_action=to_zero, group_action=group_action)


def _idle_expression(queues: JobQueues, cluster: ecs.ICluster,
                     service: ecs.IService) -> cloudwatch.MathExpression:
    """1 when every consumed queue had nothing visible and nothing in flight all minute
    (Maximum) and tasks are wanted, else 0. The main queue's terms are not FILLed: no
    datapoint, no value. An idle priority queue publishes nothing and is FILLed with 0."""
    metrics: dict[str, cloudwatch.IMetric] = {}
    terms: list[str] = []
    for prefix, queue in queue_metric_ids(queues):
        for suffix, name in (("visible", "ApproximateNumberOfMessagesVisible"),
                             ("inflight", "ApproximateNumberOfMessagesNotVisible")):
            metric_id = f"{prefix}idle{suffix}"
            metrics[metric_id] = queue_metric(queue, name, "Maximum")
            terms.append(metric_id if queue is queues.main else f"FILL({metric_id}, 0)")
    metrics["desired"] = service_metric(cluster, service, "DesiredTaskCount")
    return cloudwatch.MathExpression(
        expression=f"IF(({' + '.join(terms)}) == 0 AND FILL(desired, 0) > 0, 1, 0)",
        using_metrics=metrics,
        label="Nothing waiting or in flight, tasks wanted",
        period=Duration.seconds(IDLE_ALARM_PERIOD_SECONDS))
