"""Alerts for what no queue metric shows: GPU capacity that cannot be had, tasks that
cannot be placed, deployments that fail, and events that were not delivered.

All go to the alarm topic (infra/alarms.py). AWS services report the first three as
EventBridge events, not metrics: a G-instance vCPU quota of 0 or a type with no capacity
is an Auto Scaling "EC2 Instance Launch Unsuccessful" event; a task with nowhere to run is
an ECS service action event. Each rule's e-mail is one readable line with the cause. A
synth with no ``alarmEmail`` warns: alarms would then reach only those who subscribe
to the topic themselves.
"""

from __future__ import annotations

from aws_cdk import Annotations, Duration, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_sns as sns
from constructs import Construct

from infra.alarms import WORKER_METRICS_NAMESPACE
from infra.config import FleetConfig

# The worker's metric of events it could not deliver (worker/fleet/events.py), by target.
# "callback" (a job's own --callback-url) is left out: a caller's endpoint being down is
# the caller's business, not the fleet's.
UNDELIVERED_METRIC = "EventsUndelivered"
ALERTED_EVENT_TARGETS = ("sns", "webhook")
# ECS service action events (detail-type "ECS Service Action") that mean tasks do not run.
PLACEMENT_EVENT_NAMES = ("SERVICE_TASK_PLACEMENT_FAILURE",
                         "SERVICE_TASK_CONFIGURATION_FAILURE")
NO_ALARM_EMAIL_WARNING = (
    "alarmEmail is empty: the alarm topic (output AlarmTopicArn) has no subscriber, so "
    "alarms (DLQ not empty, jobs waiting, GPU launches failing, tasks not placed) reach "
    "nobody. Deploy with -c alarmEmail=you@example.com, or subscribe to the topic yourself.")


def operations_alerts(scope: Stack, config: FleetConfig, *, topic: sns.ITopic,
                      auto_scaling_group: autoscaling.IAutoScalingGroup,
                      service: ecs.IService) -> list[events.Rule]:
    """EventBridge rules and the undelivered-events alarm, all to ``topic``."""
    if not config.alarm_email:
        Annotations.of(scope).add_warning_v2("img2img:no-alarm-email", NO_ALARM_EMAIL_WARNING)
    rules = [
        _rule(scope, "GpuLaunchFailedRule", topic,
              description="GPU instances cannot be launched (vCPU quota, capacity, AMI)",
              pattern=events.EventPattern(
                  source=["aws.autoscaling"],
                  detail_type=["EC2 Instance Launch Unsuccessful"],
                  detail={"AutoScalingGroupName": [
                      auto_scaling_group.auto_scaling_group_name]}),
              message=["img2img fleet: a GPU instance could not be launched in group",
                       events.EventField.from_path("$.detail.AutoScalingGroupName"), "-",
                       events.EventField.from_path("$.detail.StatusMessage")]),
        _rule(scope, "TaskPlacementFailedRule", topic,
              description="Worker tasks cannot be placed or started",
              pattern=events.EventPattern(
                  source=["aws.ecs"], detail_type=["ECS Service Action"],
                  resources=[service.service_arn],
                  detail={"eventName": list(PLACEMENT_EVENT_NAMES)}),
              message=["img2img fleet:", events.EventField.from_path("$.detail.eventName"),
                       "for the worker service; reason:",
                       events.EventField.from_path("$.detail.reason")]),
        _rule(scope, "DeploymentFailedRule", topic,
              description="A worker service deployment failed (and was rolled back)",
              pattern=events.EventPattern(
                  source=["aws.ecs"], detail_type=["ECS Deployment State Change"],
                  resources=[service.service_arn],
                  detail={"eventName": ["SERVICE_DEPLOYMENT_FAILED"]}),
              message=["img2img fleet: a deployment of the worker service failed:",
                       events.EventField.from_path("$.detail.reason")]),
    ]
    _undelivered_events_alarm(scope).add_alarm_action(cw_actions.SnsAction(topic))
    return rules


def _rule(scope: Construct, construct_id: str, topic: sns.ITopic, *, description: str,
          pattern: events.EventPattern, message: list[str]) -> events.Rule:
    rule = events.Rule(scope, construct_id, description=description, event_pattern=pattern)
    # One line a person can act on (EventBridge fills in the event's fields).
    rule.add_target(targets.SnsTopic(
        topic, message=events.RuleTargetInput.from_text(" ".join(message))))
    return rule


def _undelivered_events_alarm(scope: Construct) -> cloudwatch.Alarm:
    per_target = {
        f"m{index}": cloudwatch.Metric(
            namespace=WORKER_METRICS_NAMESPACE, metric_name=UNDELIVERED_METRIC,
            dimensions_map={"Target": target}, statistic="Sum", period=Duration.minutes(5))
        for index, target in enumerate(ALERTED_EVENT_TARGETS)}
    total = cloudwatch.MathExpression(
        expression=" + ".join(f"FILL({m}, 0)" for m in per_target),
        using_metrics=per_target, label="Events not delivered", period=Duration.minutes(5))
    return cloudwatch.Alarm(
        scope, "EventsUndeliveredAlarm",
        alarm_description="Workers could not deliver job/batch events to the events topic "
                          "or the webhook (see the worker logs: 'could not deliver')",
        metric=total, threshold=0, evaluation_periods=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
