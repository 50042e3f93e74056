"""The CloudWatch metrics scaling and alarms read: SQS queues and the worker service."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_sqs as sqs

PERIOD = Duration.minutes(1)
SQS_NAMESPACE = "AWS/SQS"
CONTAINER_INSIGHTS_NAMESPACE = "ECS/ContainerInsights"


def queue_metric(queue: sqs.IQueue, name: str, statistic: str = "Sum") -> cloudwatch.Metric:
    return cloudwatch.Metric(
        namespace=SQS_NAMESPACE, metric_name=name,
        dimensions_map={"QueueName": queue.queue_name},
        statistic=statistic, period=PERIOD)


def service_dimensions(cluster: ecs.ICluster, service: ecs.IService) -> dict[str, str]:
    return {"ClusterName": cluster.cluster_name, "ServiceName": service.service_name}


def service_metric(cluster: ecs.ICluster, service: ecs.IService,
                   name: str) -> cloudwatch.Metric:
    """A Container Insights service metric (RunningTaskCount, DesiredTaskCount, ...)."""
    return cloudwatch.Metric(
        namespace=CONTAINER_INSIGHTS_NAMESPACE, metric_name=name,
        dimensions_map=service_dimensions(cluster, service),
        statistic="Average", period=PERIOD)
