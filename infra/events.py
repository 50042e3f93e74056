"""The events topic the worker publishes job and batch events to, and who hears them.

Subscribers are optional: an e-mail address (every event, so for small fleets), and an
SQS queue for programs (raw delivery: each message body is the worker's JSON event).
A webhook is not a subscription: the worker calls it itself (worker_service.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Duration
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.config import FleetConfig

EVENTS_QUEUE_RETENTION = Duration.days(14)


@dataclass(frozen=True)
class FleetEvents:
    topic: sns.Topic
    queue: sqs.Queue | None


def fleet_events(scope: Construct, config: FleetConfig) -> FleetEvents:
    topic = sns.Topic(scope, "EventsTopic", display_name="img2img fleet events",
                      enforce_ssl=True)
    if config.events_email:
        topic.add_subscription(subs.EmailSubscription(config.events_email))
    queue = None
    if config.events_queue:
        # SSE-SQS: SNS can deliver to it without a KMS key policy.
        queue = sqs.Queue(
            scope, "EventsQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=EVENTS_QUEUE_RETENTION,
        )
        topic.add_subscription(subs.SqsSubscription(queue, raw_message_delivery=True))
    return FleetEvents(topic=topic, queue=queue)
