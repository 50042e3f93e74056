"""Alarms that need a person, sent to an SNS topic (optionally e-mailed)."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

from infra.config import FleetConfig
from infra.metrics import queue_metric
from infra.queues import JobQueues

# The worker's CloudWatch EMF namespace and its task-protection failure metric
# (worker/logs.py, worker/task_protection.py).
WORKER_METRICS_NAMESPACE = "Img2ImgFleet"
PROTECTION_FAILURE_METRIC = "TaskProtectionFailures"


def fleet_alarms(scope: Construct, config: FleetConfig, *, queues: JobQueues) -> sns.Topic:
    topic = sns.Topic(scope, "AlarmTopic", display_name="img2img fleet alarms")
    if config.alarm_email:
        topic.add_subscription(subs.EmailSubscription(config.alarm_email))
    alarms = [
        cloudwatch.Alarm(
            scope, "DlqNotEmptyAlarm",
            alarm_description="Jobs reached the dead-letter queue: inspect, fix, then "
                              "`img2img-producer redrive`",
            metric=queue_metric(queues.main_dlq, "ApproximateNumberOfMessagesVisible",
                                "Maximum"),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ),
        cloudwatch.Alarm(
            scope, "OldestMessageAgeAlarm",
            alarm_description=(
                f"A job has waited more than {config.oldest_message_alarm_seconds} s"),
            metric=queue_metric(queues.main, "ApproximateAgeOfOldestMessage", "Maximum"),
            threshold=config.oldest_message_alarm_seconds,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=5,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        ),
        # The worker emits this EMF metric on every failed call to the agent's task
        # protection endpoint (worker/task_protection.py): scale-in may stop busy tasks.
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
        ),
    ]
    notify = cw_actions.SnsAction(topic)
    for alarm in alarms:
        alarm.add_alarm_action(notify)
    return topic
