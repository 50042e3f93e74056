"""IAM the ECS agent needs on the worker's behalf: task protection and Spot draining.

Both calls are made by the agent with someone else's credentials (the task role for
task protection, the instance role for Spot draining), so a missing grant fails only at
run time. Checked on the on-demand and the Spot template.
"""

from __future__ import annotations

import pytest

from tests.support.infra_synth import Synth, as_list, flat, refs, synth

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")

SPOT = {"spot": "true"}


@pytest.fixture(scope="module", params=["on-demand", "spot"])
def template(request: pytest.FixtureRequest) -> Synth:
    return synth(SPOT if request.param == "spot" else {})


def _cluster_id(s: Synth) -> str:
    cluster_id, _ = s.one("AWS::ECS::Cluster")
    return cluster_id


def test_task_role_may_protect_only_tasks_of_its_own_cluster(template: Synth) -> None:
    from aws_cdk.assertions import Match

    template.template.has_resource_properties("AWS::IAM::Policy", {
        "Roles": [{"Ref": template.task_role_id()}],
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Sid": "OwnTaskProtection", "Effect": "Allow",
            "Action": ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]})])}})
    granted = template.granted(template.task_role_id())
    for action in ("ecs:UpdateTaskProtection", "ecs:GetTaskProtection"):
        (statement,) = granted[action]
        (resource,) = as_list(statement["Resource"])
        assert flat(resource) == (
            "arn:{AWS::Partition}:ecs:{AWS::Region}:{AWS::AccountId}:task/"
            f"{{{_cluster_id(template)}}}/*"), resource
        assert "Condition" not in statement
    # No other ECS action reaches the task role.
    assert sorted(a for a in granted if a.startswith("ecs:")) == [
        "ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]


def test_spot_instances_may_drain_themselves_in_their_cluster_only() -> None:
    spot = synth(SPOT)
    (statement,) = spot.granted(spot.instance_role_id())["ecs:UpdateContainerInstancesState"]
    (resource,) = as_list(statement["Resource"])
    assert flat(resource) == ("arn:{AWS::Partition}:ecs:{AWS::Region}:{AWS::AccountId}:"
                              "container-instance/*")
    (cluster_arn,) = statement["Condition"]["ArnEquals"].values()
    assert list(statement["Condition"]["ArnEquals"]) == ["ecs:cluster"]
    assert refs(cluster_arn) == {_cluster_id(spot)}
    assert cluster_arn == {"Fn::GetAtt": [_cluster_id(spot), "Arn"]}


def test_on_demand_instances_get_no_draining_permission() -> None:
    on_demand = synth()
    assert "ecs:UpdateContainerInstancesState" not in on_demand.granted(
        on_demand.instance_role_id())


def test_failing_task_protection_raises_an_alarm(template: Synth) -> None:
    from common.logs import EMF_NAMESPACE
    from worker.fleet.task_protection import PROTECTION_FAILURE_METRIC

    topic_id = next(k for k, v in template.resources("AWS::SNS::Topic").items()
                    if v["Properties"].get("DisplayName") == "img2img fleet alarms")
    (alarm,) = [a for a in template.alarms()
                if a.get("MetricName") == PROTECTION_FAILURE_METRIC]
    # The metric the worker writes as EMF: same namespace, no dimensions.
    assert alarm["Namespace"] == EMF_NAMESPACE
    assert "Dimensions" not in alarm
    assert alarm["Statistic"] == "Sum" and alarm["Threshold"] == 0
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    assert refs(alarm["AlarmActions"]) == {topic_id}


def test_task_role_may_delete_result_records_only(template: Synth) -> None:
    """A released job drops its claim (its running record); outputs are never deleted."""
    granted = template.granted(template.task_role_id())
    (statement,) = granted["s3:DeleteObject"]
    (resource,) = as_list(statement["Resource"])
    assert flat(resource).endswith("/outputs/*.json"), resource
