"""The fast start and the short idle tail in the template: the idle alarm and its two
actions, what keeps busy tasks and instances, the warm pool, and the producer's policy."""

from __future__ import annotations

import json
import re

import pytest

from infra.config import ContextError, FleetConfig
from tests.support.infra_synth import EVERYTHING_ON, SPOT, Synth, as_list, flat, refs, synth
from tests.support.paths import REPO

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")

WARM = {"warmPoolSize": "2"}


@pytest.fixture(scope="module", params=["on-demand", "spot", "everything-on"])
def template(request: pytest.FixtureRequest) -> Synth:
    return synth({"on-demand": {}, "spot": SPOT, "everything-on": EVERYTHING_ON}[
        request.param])


def _idle_alarm(s: Synth) -> dict:
    (alarm,) = [a for a in s.alarms() if "Nothing waiting or in flight" in str(a)]
    return alarm


def test_the_idle_alarm_scales_service_and_group_to_zero(template: Synth) -> None:
    alarm = _idle_alarm(template)
    assert alarm["EvaluationPeriods"] == 1 and alarm["DatapointsToAlarm"] == 1
    assert alarm["Threshold"] == 1 and alarm["TreatMissingData"] == "notBreaching"
    actions = refs(alarm["AlarmActions"])
    by_type = {template.json["Resources"][a]["Type"]: template.json["Resources"][a]
               ["Properties"] for a in actions}
    service = by_type["AWS::ApplicationAutoScaling::ScalingPolicy"][
        "StepScalingPolicyConfiguration"]
    assert service["AdjustmentType"] == "ExactCapacity"
    assert service["StepAdjustments"] == [{"MetricIntervalLowerBound": 0,
                                           "ScalingAdjustment": 0}]
    group = by_type["AWS::AutoScaling::ScalingPolicy"]
    assert group["AdjustmentType"] == "ExactCapacity" and group["PolicyType"] == "StepScaling"
    assert group["StepAdjustments"] == [{"MetricIntervalLowerBound": 0,
                                         "ScalingAdjustment": 0}]
    asg_id, _ = template.one("AWS::AutoScaling::AutoScalingGroup")
    assert refs(group["AutoScalingGroupName"]) == {asg_id}


def test_the_idle_alarm_needs_every_queue_empty_all_minute(template: Synth) -> None:
    alarm = _idle_alarm(template)
    metrics = {m["Id"]: m for m in alarm["Metrics"]}
    (expression,) = [m["Expression"] for m in metrics.values() if m.get("ReturnData")]
    sqs = {i: m["MetricStat"] for i, m in metrics.items()
           if m.get("MetricStat", {}).get("Metric", {}).get("Namespace") == "AWS/SQS"}
    # Visible and in flight (a job being worked on is in flight), the minute's Maximum.
    assert {s["Metric"]["MetricName"] for s in sqs.values()} == {
        "ApproximateNumberOfMessagesVisible", "ApproximateNumberOfMessagesNotVisible"}
    assert {s["Stat"] for s in sqs.values()} == {"Maximum"}
    main, _ = template.queue_ids()
    main_ids = [i for i, s in sqs.items() if refs(s["Metric"]["Dimensions"]) == {main}]
    assert len(main_ids) == 2
    # The main queue's terms are bare: a late datapoint leaves the expression without a
    # value (not breaching) instead of reading as an empty queue.
    for metric_id in sqs:
        filled = f"FILL({metric_id}, 0)" in expression
        assert filled == (metric_id not in main_ids), metric_id
    assert len(sqs) == 2 * len(_consumed(template))
    assert expression.endswith("== 0 AND FILL(desired, 0) > 0, 1, 0)")


def _consumed(s: Synth) -> list[str]:
    env = s.env()
    return [n for n in ("IMG2IMG_QUEUE_URL", "IMG2IMG_PRIORITY_QUEUE_URL") if n in env]


def test_no_busy_task_or_instance_is_scaled_in(template: Synth) -> None:
    """Three locks: the worker protects its task while it holds jobs (the task role may,
    tests/infra/test_iam.py); an instance running a task is protected from the group's
    scale-in (managed termination protection, instances protected from launch); and
    both scale-ins to 0 need nothing in flight (above)."""
    _, provider = template.one("AWS::ECS::CapacityProvider")
    group_provider = provider["AutoScalingGroupProvider"]
    assert group_provider["ManagedTerminationProtection"] == "ENABLED"
    assert group_provider["ManagedScaling"]["Status"] == "ENABLED"
    _, group = template.one("AWS::AutoScaling::AutoScalingGroup")
    assert group["NewInstancesProtectedFromScaleIn"] is True
    assert "ecs:UpdateTaskProtection" in template.granted(template.task_role_id())


def test_no_warm_pool_unless_asked(template: Synth) -> None:
    assert template.resources("AWS::AutoScaling::WarmPool") == {}
    _, lt = template.one("AWS::EC2::LaunchTemplate")
    assert "ECS_WARM_POOLS_CHECK" not in json.dumps(lt)


def test_the_warm_pool_keeps_stopped_instances_with_the_image_pulled() -> None:
    s = synth(WARM)
    _, pool = s.one("AWS::AutoScaling::WarmPool")
    asg_id, group = s.one("AWS::AutoScaling::AutoScalingGroup")
    assert refs(pool["AutoScalingGroupName"]) == {asg_id}
    assert (pool["MinSize"], pool["MaxGroupPreparedCapacity"], pool["PoolState"]) == (
        2, 2, "Stopped")
    # ECS refuses instances returned to the pool on scale-in.
    assert pool.get("InstanceReusePolicy", {}).get("ReuseOnScaleIn", False) is False
    # A warm pool takes no mixed-instances policy: the group uses the launch template.
    assert "MixedInstancesPolicy" not in group and "LaunchTemplate" in group
    _, lt = s.one("AWS::EC2::LaunchTemplate")
    user_data = flat(lt["LaunchTemplateData"]["UserData"]["Fn::Base64"])
    assert "echo ECS_WARM_POOLS_CHECK=true >> /etc/ecs/ecs.config" in user_data
    repo_id, _ = s.one("AWS::ECR::Repository")
    assert ("--password-stdin {AWS::AccountId}.dkr.ecr.{AWS::Region}.{AWS::URLSuffix} "
            "&& docker pull ") in user_data
    tag = FleetConfig.model_fields["image_tag"].default
    assert f".{{AWS::URLSuffix}}/{{{repo_id}}}:{tag} && echo" in user_data
    # The instance role may pull the worker image (the pre-pull runs as the instance).
    granted = s.granted(s.instance_role_id())
    (pull,) = granted["ecr:BatchGetImage"]
    assert refs(pull["Resource"]) == {repo_id}
    assert "ecr:GetAuthorizationToken" in granted


def test_spot_with_a_warm_pool_is_refused() -> None:
    with pytest.raises(ContextError, match="warmPoolSize needs on-demand capacity"):
        FleetConfig.from_context({"spot": "true", "warmPoolSize": "2"})


PRODUCER_STATEMENTS = {
    "Enqueue": ["sqs:SendMessage", "sqs:GetQueueAttributes"],
    "Status": ["sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
    "Redrive": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                "sqs:StartMessageMoveTask"],
    "ReadFleetObjects": ["s3:GetObject"],
    "WriteFleetObjects": ["s3:PutObject"],
    "ListFleetPrefixes": ["s3:ListBucket"],
    "StartWorkers": ["ecs:UpdateService", "ecs:DescribeServices"],
    "StartInstances": ["autoscaling:SetDesiredCapacity"],
    "ReadInstances": ["autoscaling:DescribeAutoScalingGroups"],
}


def test_the_producer_policy_holds_exactly_what_the_producer_calls(template: Synth) -> None:
    (policy_id, policy), = [(k, v["Properties"]) for k, v in
                            template.resources("AWS::IAM::ManagedPolicy").items()
                            if "img2img-producer" in v["Properties"].get("Description", "")]
    statements = {st["Sid"]: st for st in policy["PolicyDocument"]["Statement"]}
    assert {sid: sorted(as_list(st["Action"])) for sid, st in statements.items()} == {
        sid: sorted(actions) for sid, actions in PRODUCER_STATEMENTS.items()}
    assert all(st["Effect"] == "Allow" for st in statements.values())
    main, dlq = template.queue_ids()
    assert main in refs(statements["Enqueue"]["Resource"])
    assert refs(statements["Redrive"]["Resource"]) >= {dlq}
    assert main not in refs(statements["Redrive"]["Resource"])  # never deletes jobs
    service_id, _ = template.one("AWS::ECS::Service")
    assert refs(statements["StartWorkers"]["Resource"]) == {service_id}
    asg_id, _ = template.one("AWS::AutoScaling::AutoScalingGroup")
    assert asg_id in refs(statements["StartInstances"]["Resource"])
    assert statements["ReadInstances"]["Resource"] == "*"  # Describe takes no resource
    bucket_id, _ = template.one("AWS::S3::Bucket")
    for sid in ("ReadFleetObjects", "WriteFleetObjects"):
        resources = [flat(r) for r in as_list(statements[sid]["Resource"])]
        assert resources and all(r.startswith(f"{{{bucket_id}}}/") for r in resources), sid
        assert f"{{{bucket_id}}}/outputs/*" in resources and (
            f"{{{bucket_id}}}/inputs/*" in resources)
    assert "s3:DeleteObject" not in json.dumps(policy)
    outputs = template.json["Outputs"]
    assert refs(outputs["ProducerPolicyArn"]["Value"]) == {policy_id}


# The producer's boto3 clients by the names its code gives them, and the calls whose IAM
# action is not the call's own name in CamelCase.
CLIENTS = {"s3": "s3", "sqs": "sqs", "probe": "sqs", "ecs": "ecs",
           "autoscaling": "autoscaling"}
SPECIAL_ACTIONS = {"s3:HeadObject": "s3:GetObject", "s3:UploadFile": "s3:PutObject",
                   "s3:ListObjectsV2": "s3:ListBucket"}


def _producer_actions() -> set[str]:
    """Every IAM action behind a boto3 call in producer/ (batch calls are authorised by
    their single action: SendMessageBatch by sqs:SendMessage)."""
    actions = set()
    for path in sorted((REPO / "producer").glob("*.py")):
        text = path.read_text()
        calls = re.findall(r"\b(?:self\.)?(\w+)\.(\w+)\(", text)
        calls += [("s3", name) for name in re.findall(r'get_paginator\("(\w+)"\)', text)]
        for client, method in calls:
            if client not in CLIENTS or method == "get_paginator":
                continue
            camel = "".join(p.capitalize() for p in method.split("_"))
            action = f"{CLIENTS[client]}:{camel.removesuffix('Batch')}"
            actions.add(SPECIAL_ACTIONS.get(action, action))
    return actions


def test_the_producer_policy_covers_every_call_the_producer_makes() -> None:
    """Read from the code: a new call the policy lacks fails here, not as AccessDenied,
    and the policy grants no action the producer never calls."""
    called = _producer_actions()
    assert {"sqs:SendMessage", "sqs:GetQueueUrl", "s3:ListBucket", "ecs:UpdateService",
            "autoscaling:SetDesiredCapacity"} <= called  # the scan sees the code
    granted = {a for actions in PRODUCER_STATEMENTS.values() for a in actions}
    assert called == granted
