"""Alarms that need a person, sent to an SNS topic (optionally e-mailed)."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import FleetConfig
from infra.metrics import queue_metric
from infra.queues import JobQueues

# The worker's CloudWatch EMF namespace and its task-protection failure metric
# (common/logs.py, worker/fleet/task_protection.py).
WORKER_METRICS_NAMESPACE = "Img2ImgFleet"
PROTECTION_FAILURE_METRIC = "TaskProtectionFailures"


def fleet_alarms(scope: Construct, config: FleetConfig, *, queues: JobQueues) -> sns.Topic:
    topic = sns.Topic(scope, "AlarmTopic", display_name="img2img fleet alarms")
    if config.alarm_email:
        topic.add_subscription(subs.EmailSubscription(config.alarm_email))
    alarms = []
    for label, name, queue, dlq in _named_queues(queues):
        alarms.append(cloudwatch.Alarm(
            scope, f"{label}DlqNotEmptyAlarm",
            alarm_description=f"Jobs reached the {name}'s dead-letter queue: inspect, fix, "
                              "then `img2img-producer redrive`",
            metric=queue_metric(dlq, "ApproximateNumberOfMessagesVisible", "Maximum"),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ))
        alarms.append(cloudwatch.Alarm(
            scope, f"{label}OldestMessageAgeAlarm",
            alarm_description=(f"A job in the {name} has waited more than "
                               f"{config.oldest_message_alarm_seconds} s"),
            metric=queue_metric(queue, "ApproximateAgeOfOldestMessage", "Maximum"),
            threshold=config.oldest_message_alarm_seconds,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=5,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ))
    alarms.append(
        # The worker emits this EMF metric on every failed call to the agent's task
        # protection endpoint (worker/fleet/task_protection.py): scale-in may stop busy tasks.
        cloudwatch.Alarm(
            scope, "TaskProtectionFailingAlarm",
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
        ))
    notify = cw_actions.SnsAction(topic)
    for alarm in alarms:
        alarm.add_alarm_action(notify)
    return topic


def _named_queues(queues: JobQueues) -> list[tuple[str, str, sqs.IQueue, sqs.IQueue]]:
    """(alarm id prefix, name in descriptions, queue, its DLQ); the main queue's alarms
    keep their unprefixed ids."""
    named = [("", "job queue", queues.main, queues.main_dlq)]
    if queues.priority is not None and queues.priority_dlq is not None:
        named.append(("Priority", "priority queue", queues.priority, queues.priority_dlq))
    return named
