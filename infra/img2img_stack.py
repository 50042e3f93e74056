"""The img2img fleet stack: S3 in/out, SQS + DLQ, GPU ECS workers scaled on queue depth.

Each part is built by its own module; this class only puts them together. Every knob is
a CDK context key (infra/config.py, docs/deploy.md); nothing is read at import time.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from infra.alarms import fleet_alarms
from infra.capacity import gpu_capacity
from infra.config import FleetConfig
from infra.events import fleet_events
from infra.idle_scale_in import idle_scale_in
from infra.image_repository import worker_repository
from infra.operations_alerts import operations_alerts
from infra.producer_policy import producer_policy
from infra.queues import job_queues
from infra.scaling import scale_on_queue_depth
from infra.storage import fleet_bucket, notify_uploads
from infra.warm_pool import warm_pool
from infra.worker_role import worker_task_role
from infra.worker_service import worker_service


class Img2ImgFleetStack(Stack):
    """Bucket, job queues + DLQs, events, GPU ECS capacity, the worker service, scaling and
    alarms."""

    def __init__(self, scope: Construct, construct_id: str, *, config: FleetConfig,
                 **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config

        self.bucket = fleet_bucket(self, config)
        self.queues = job_queues(self, config)
        if config.uploads_prefix:
            notify_uploads(self.bucket, self.queues.main, config.uploads_prefix)
        self.events = fleet_events(self, config)
        self.repository = worker_repository(self)
        self.capacity = gpu_capacity(self, config)
        self.warm_pool = warm_pool(config, self.capacity, self.repository)
        self.task_role = worker_task_role(
            self, config, bucket=self.bucket, queues=self.queues,
            cluster=self.capacity.cluster, events_topic=self.events.topic)
        self.worker = worker_service(
            self, config, capacity=self.capacity, repository=self.repository,
            task_role=self.task_role, bucket=self.bucket, queues=self.queues,
            events_topic=self.events.topic)
        self.scalable_target = scale_on_queue_depth(
            self, config, queues=self.queues, cluster=self.capacity.cluster,
            service=self.worker.service)
        self.idle = idle_scale_in(
            self, queues=self.queues, cluster=self.capacity.cluster,
            service=self.worker.service, target=self.scalable_target,
            group=self.capacity.auto_scaling_group)
        self.producer_policy = producer_policy(
            self, config, bucket=self.bucket, queues=self.queues, service=self.worker.service,
            group=self.capacity.auto_scaling_group)
        self.alarm_topic = fleet_alarms(self, config, queues=self.queues)
        operations_alerts(self, config, topic=self.alarm_topic,
                          auto_scaling_group=self.capacity.auto_scaling_group,
                          service=self.worker.service)
        self._outputs()

    def _outputs(self) -> None:
        outputs = {
            "BucketName": self.bucket.bucket_name,
            "QueueUrl": self.queues.main.queue_url,
            "DlqUrl": self.queues.main_dlq.queue_url,
            "ClusterName": self.capacity.cluster.cluster_name,
            "ServiceName": self.worker.service.service_name,
            # Teardown needs it: instances must be unprotected before the group can empty.
            "AutoScalingGroupName": self.capacity.auto_scaling_group.auto_scaling_group_name,
            "RepositoryUri": self.repository.repository_uri,
            "LogGroupName": self.worker.log_group.log_group_name,
            "AlarmTopicArn": self.alarm_topic.topic_arn,
            "ProducerPolicyArn": self.producer_policy.managed_policy_arn,
            "EventsTopicArn": self.events.topic.topic_arn,
        }
        if self.queues.priority is not None and self.queues.priority_dlq is not None:
            outputs["PriorityQueueUrl"] = self.queues.priority.queue_url
            outputs["PriorityDlqUrl"] = self.queues.priority_dlq.queue_url
        if self.events.queue is not None:
            outputs["EventsQueueUrl"] = self.events.queue.queue_url
        for name, value in outputs.items():
            CfnOutput(self, name, value=value)
