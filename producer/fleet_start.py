"""The producer's start call: right after enqueueing, raise the worker service (and its
GPU group) to what the backlog needs, instead of waiting for the start alarm.

The alarm reads SQS's one-minute metrics a minute late (and up to 15 minutes late for a
queue idle for hours); the producer knows at once. The call only ever raises:

- wanted tasks: the start tiers the stack deploys, ceil(backlog / backlogPerTask) from
  1 up to maxTasks (``capacity_planner.autoscaling.tasks_for_backlog``);
- ``ecs:UpdateService`` sets the desired count to that when it is lower, never down, and
  is not called when the service already wants as many (a no-op);
- ``autoscaling:SetDesiredCapacity`` does the same for the GPU group (one task per
  instance), so instances launch now rather than after the capacity provider's
  one-minute reaction; never above the group's maximum.

Target tracking, the idle alarm and the capacity provider take over from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capacity_planner.autoscaling import tasks_for_backlog
from capacity_planner.stack_policy import fleet_config, scaling_policy_of
from contract.errors import InvalidJob


@dataclass(frozen=True)
class FleetTarget:
    """The fleet to start: from the stack's outputs (ClusterName, ServiceName,
    AutoScalingGroupName) and its maxTasks and backlogPerTask."""

    cluster: str
    service: str
    group: str | None = None
    max_tasks: int = 4
    backlog_per_task: int = 32

    def wanted(self, backlog: int) -> int:
        if backlog <= 0:
            return 0
        policy = scaling_policy_of(fleet_config(maxTasks=self.max_tasks,
                                                backlogPerTask=self.backlog_per_task))
        return tasks_for_backlog(policy, backlog)


@dataclass(frozen=True)
class StartOutcome:
    backlog: int
    wanted: int
    tasks_before: int
    tasks_after: int
    instances_before: int | None = None
    instances_after: int | None = None

    @property
    def changed(self) -> bool:
        return (self.tasks_after != self.tasks_before
                or self.instances_after != self.instances_before)

    def line(self) -> str:
        head = f"start: backlog {self.backlog} wants {self.wanted} task(s)"
        tasks = (f"service {self.tasks_before} -> {self.tasks_after}"
                 if self.tasks_after != self.tasks_before
                 else f"service already at {self.tasks_before}")
        parts = [tasks]
        if self.instances_before is not None:
            parts.append(f"GPU group {self.instances_before} -> {self.instances_after}"
                         if self.instances_after != self.instances_before
                         else f"GPU group already at {self.instances_before}")
        return f"{head}: {', '.join(parts)}"


def queue_backlog(sqs: Any, queue_url: str) -> int:
    """Messages waiting or in flight on the queue (SQS's approximate counts)."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages",
                                            "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return (int(attrs.get("ApproximateNumberOfMessages", 0))
            + int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)))


def start_fleet(ecs: Any, autoscaling: Any | None, target: FleetTarget,
                backlog: int) -> StartOutcome:
    """Raise the service (and the group, when named) to the backlog's need."""
    wanted = target.wanted(backlog)
    found = ecs.describe_services(cluster=target.cluster, services=[target.service])
    services = [s for s in found.get("services", []) if s.get("status") != "INACTIVE"]
    if not services:
        raise InvalidJob(f"no worker service {target.service!r} in cluster "
                         f"{target.cluster!r} (IMG2IMG_CLUSTER, IMG2IMG_SERVICE: the stack's "
                         "ClusterName and ServiceName outputs)")
    before = int(services[0]["desiredCount"])
    after = before
    if wanted > before:
        ecs.update_service(cluster=target.cluster, service=target.service,
                           desiredCount=wanted)
        after = wanted
    if autoscaling is None or not target.group:
        return StartOutcome(backlog, wanted, before, after)
    groups = autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[target.group])["AutoScalingGroups"]
    if not groups:
        raise InvalidJob(f"no GPU Auto Scaling group {target.group!r} (IMG2IMG_GPU_GROUP: "
                         "the stack's AutoScalingGroupName output)")
    group = groups[0]
    instances_before = int(group["DesiredCapacity"])
    instances_after = instances_before
    instances = min(wanted, int(group["MaxSize"]))
    if instances > instances_before:
        autoscaling.set_desired_capacity(AutoScalingGroupName=target.group,
                                         DesiredCapacity=instances, HonorCooldown=False)
        instances_after = instances
    return StartOutcome(backlog, wanted, before, after, instances_before, instances_after)
