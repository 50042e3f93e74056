"""The producer's start call against a real HTTP endpoint (moto server): ECS
UpdateService and Auto Scaling SetDesiredCapacity up to the backlog's need, never down,
no call when the capacity is there, tiers up to maxTasks; and ``enqueue --start``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from typer.testing import CliRunner

from common import aws
from contract.errors import InvalidJob
from producer.cli import app
from producer.fleet_start import FleetTarget, start_fleet
from tests.support.queues import put_images

runner = CliRunner()


@dataclass
class Fleet:
    ecs: Any
    autoscaling: Any
    cluster: str
    service: str
    group: str
    calls: list[str]

    def tasks(self) -> int:
        (svc,) = self.ecs.describe_services(cluster=self.cluster,
                                            services=[self.service])["services"]
        return svc["desiredCount"]

    def instances(self) -> int:
        (group,) = self.autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=[self.group])["AutoScalingGroups"]
        return group["DesiredCapacity"]

    def target(self, **overrides: Any) -> FleetTarget:
        return FleetTarget(**{"cluster": self.cluster, "service": self.service,
                              "group": self.group, **overrides})


@pytest.fixture(scope="module")
def made_fleet(moto_endpoint: str) -> Iterator[Fleet]:
    """A cluster with a worker service and a GPU group (max 4), made once per module."""
    name = "f" + uuid.uuid4().hex[:10]
    ecs = aws.client("ecs", endpoint_url=moto_endpoint)
    autoscaling = aws.client("autoscaling", endpoint_url=moto_endpoint)
    ec2 = aws.client("ec2", endpoint_url=moto_endpoint)
    calls: list[str] = []
    for client in (ecs, autoscaling):  # record every write the start makes
        client.meta.events.register(
            "before-call.*.*", lambda model, **_: calls.append(model.name)
            if not model.name.startswith("Describe") else None)
    ecs.create_cluster(clusterName=name)
    ecs.register_task_definition(family=name, containerDefinitions=[
        {"name": "worker", "image": "worker:latest", "memory": 512}])
    ecs.create_service(cluster=name, serviceName="workers", taskDefinition=name,
                       desiredCount=0)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(LaunchTemplateName=f"{name}-lt", LaunchTemplateData={
        "ImageId": image, "InstanceType": "g5.xlarge"})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=f"{name}-gpu", MinSize=0, MaxSize=4, DesiredCapacity=0,
        AvailabilityZones=["us-east-1a"], LaunchTemplate={"LaunchTemplateName": f"{name}-lt"})
    yield Fleet(ecs, autoscaling, name, "workers", f"{name}-gpu", calls)


@pytest.fixture
def workers(made_fleet: Fleet) -> Fleet:
    """The fleet at 0 tasks and 0 instances, with no write recorded yet."""
    made_fleet.ecs.update_service(cluster=made_fleet.cluster, service=made_fleet.service,
                                  desiredCount=0)
    made_fleet.autoscaling.set_desired_capacity(AutoScalingGroupName=made_fleet.group,
                                                DesiredCapacity=0)
    made_fleet.calls.clear()
    return made_fleet


def test_an_empty_fleet_starts_at_the_backlogs_tier(workers: Fleet) -> None:
    # 40 jobs at 32 per task: ceil(40 / 32) = 2 tasks, and 2 instances for them.
    outcome = start_fleet(workers.ecs, workers.autoscaling, workers.target(), 40)
    assert (workers.tasks(), workers.instances()) == (2, 2)
    assert (outcome.tasks_before, outcome.tasks_after) == (0, 2)
    assert (outcome.instances_before, outcome.instances_after) == (0, 2)
    assert workers.calls == ["UpdateService", "SetDesiredCapacity"]
    assert outcome.line() == ("start: backlog 40 wants 2 task(s): service 0 -> 2, "
                              "GPU group 0 -> 2")


def test_tiers_go_up_to_max_tasks(workers: Fleet) -> None:
    for backlog, tasks in [(1, 1), (32, 1), (33, 2), (96, 3), (97, 4), (100_000, 4)]:
        workers.ecs.update_service(cluster=workers.cluster, service=workers.service,
                                   desiredCount=0)
        start_fleet(workers.ecs, None, workers.target(), backlog)
        assert workers.tasks() == tasks, backlog


def test_never_down_and_no_call_when_capacity_is_there(workers: Fleet) -> None:
    workers.ecs.update_service(cluster=workers.cluster, service=workers.service,
                               desiredCount=3)
    workers.autoscaling.set_desired_capacity(AutoScalingGroupName=workers.group,
                                             DesiredCapacity=3)
    workers.calls.clear()
    # 10 jobs want 1 task; 3 are wanted already: nothing is lowered, nothing is called.
    outcome = start_fleet(workers.ecs, workers.autoscaling, workers.target(), 10)
    assert (workers.tasks(), workers.instances()) == (3, 3)
    assert workers.calls == [] and not outcome.changed
    assert "service already at 3" in outcome.line()
    # No backlog at all: the same.
    start_fleet(workers.ecs, workers.autoscaling, workers.target(), 0)
    assert (workers.tasks(), workers.calls) == (3, [])


def test_the_group_is_never_raised_above_its_maximum(workers: Fleet) -> None:
    outcome = start_fleet(workers.ecs, workers.autoscaling,
                          workers.target(max_tasks=8), 1000)
    assert workers.tasks() == 8  # the service follows maxTasks
    assert workers.instances() == 4 and outcome.instances_after == 4  # group MaxSize


def test_a_wrong_service_or_group_is_named(workers: Fleet) -> None:
    with pytest.raises(InvalidJob, match="no worker service 'nope'.*IMG2IMG_SERVICE"):
        start_fleet(workers.ecs, None, workers.target(service="nope"), 5)
    with pytest.raises(InvalidJob, match="no GPU Auto Scaling group 'nope'"):
        start_fleet(workers.ecs, workers.autoscaling, workers.target(group="nope"), 5)


def test_enqueue_starts_the_fleet_unless_told_not_to(fleet, s3, workers: Fleet,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    put_images(s3, fleet.bucket, [f"in/{i}.png" for i in range(40)])
    monkeypatch.setenv("IMG2IMG_CLUSTER", workers.cluster)
    monkeypatch.setenv("IMG2IMG_SERVICE", workers.service)
    args = ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "tiny", "-p", "x"]
    quiet = runner.invoke(app, [*args, "--no-start", "--batch-id", "b-quiet"])
    assert quiet.exit_code == 0, quiet.output
    assert workers.tasks() == 0 and "start:" not in quiet.output
    monkeypatch.setenv("IMG2IMG_GPU_GROUP", workers.group)
    started = runner.invoke(app, [*args, "--batch-id", "b-start"])
    assert started.exit_code == 0, started.output
    # 80 jobs on the queue now: ceil(80 / 32) = 3 tasks, 3 instances.
    assert "start: backlog 80 wants 3 task(s): service 0 -> 3, GPU group 0 -> 3" in (
        started.output)
    assert (workers.tasks(), workers.instances()) == (3, 3)


def test_start_without_a_named_fleet_is_a_clear_error(fleet, s3,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMG2IMG_CLUSTER", raising=False)
    put_images(s3, fleet.bucket, ["in/a.png"])
    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "tiny",
                                 "-p", "x", "--start"])
    assert result.exit_code != 0
    assert "--start needs IMG2IMG_CLUSTER and IMG2IMG_SERVICE" in result.output
