"""The first week in a real account: deployments that progress under load, alarms that
reach someone, images a deployment can always pull, and the stack's hygiene.

Templates come from tests/support/infra_synth.py (synthesized once per session).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.infra_synth import (
    EVERYTHING_ON,
    SPOT,
    Synth,
    cdk_json_context,
    flat,
    refs,
    synth,
)

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")

ALARM_EMAIL = {"alarmEmail": "ops@example.com"}


@pytest.fixture(scope="module")
def default() -> Synth:
    return synth()


@pytest.fixture(scope="module", params=["on-demand", "spot"])
def template(request: pytest.FixtureRequest) -> Synth:
    return synth(SPOT if request.param == "spot" else {})


# -- deployments under load --------------------------------------------------------------

def test_deployments_replace_tasks_in_place(template: Synth) -> None:
    """The group holds maxTasks instances, one GPU task each: a deployment that had to start
    a new task before stopping an old one would wait for an instance that cannot come."""
    _, service = template.one("AWS::ECS::Service")
    deployment = service["DeploymentConfiguration"]
    assert deployment["MinimumHealthyPercent"] == 0
    assert deployment["MaximumPercent"] == 100
    # ... and a deployment that cannot start tasks still ends (rolled back), not hangs.
    assert deployment["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    _, group = template.one("AWS::AutoScaling::AutoScalingGroup")
    _, target = template.one("AWS::ApplicationAutoScaling::ScalableTarget")
    # At 100% maximum a deployment never runs more tasks than scaling allows.
    assert int(group["MaxSize"]) == target["MaxCapacity"]


# -- alarms that reach someone -----------------------------------------------------------

def _warnings(s: Synth) -> list[str]:
    from aws_cdk.assertions import Annotations, Match

    found = Annotations.from_stack(s.stack).find_warning("*", Match.any_value())
    return [str(w.entry.data) for w in found]


def test_synth_warns_when_alarms_would_reach_nobody(default: Synth) -> None:
    assert any("alarmEmail is empty" in w for w in _warnings(default))
    assert not any("alarmEmail" in w for w in _warnings(synth(ALARM_EMAIL)))
    (subscription,) = synth(ALARM_EMAIL).resources("AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Endpoint"] == "ops@example.com"


def _rules_to_alarm_topic(s: Synth) -> dict[str, dict[str, Any]]:
    topic = s.alarm_topic_id()
    rules = {}
    for rule in s.resources("AWS::Events::Rule").values():
        props = rule["Properties"]
        (target,) = props["Targets"]
        assert refs(target["Arn"]) == {topic}, props
        rules[props["EventPattern"]["detail-type"][0]] = props
    return rules


def test_launch_failures_of_the_gpu_group_reach_the_alarm_topic(default: Synth) -> None:
    rules = _rules_to_alarm_topic(default)
    pattern = rules["EC2 Instance Launch Unsuccessful"]["EventPattern"]
    (group_id,) = default.resources("AWS::AutoScaling::AutoScalingGroup")
    assert pattern["source"] == ["aws.autoscaling"]
    # Only this stack's group (Ref of an Auto Scaling group is its name).
    assert pattern["detail"] == {"AutoScalingGroupName": [{"Ref": group_id}]}
    # The mail says why (a vCPU quota of 0 is in StatusMessage).
    transformer = rules["EC2 Instance Launch Unsuccessful"]["Targets"][0]["InputTransformer"]
    assert "$.detail.StatusMessage" in transformer["InputPathsMap"].values()


def test_unplaceable_tasks_and_failed_deployments_reach_the_alarm_topic(
        default: Synth) -> None:
    rules = _rules_to_alarm_topic(default)
    (service_id,) = default.resources("AWS::ECS::Service")
    placement = rules["ECS Service Action"]["EventPattern"]
    assert placement["source"] == ["aws.ecs"]
    # Ref of an ECS service is its ARN, which service events carry in `resources`.
    assert placement["resources"] == [{"Ref": service_id}]
    assert "SERVICE_TASK_PLACEMENT_FAILURE" in placement["detail"]["eventName"]
    deployment = rules["ECS Deployment State Change"]["EventPattern"]
    assert deployment["resources"] == [{"Ref": service_id}]
    assert deployment["detail"] == {"eventName": ["SERVICE_DEPLOYMENT_FAILED"]}


def test_eventbridge_may_publish_to_the_alarm_topic(default: Synth) -> None:
    topic = default.alarm_topic_id()
    statements = [st for p in default.resources("AWS::SNS::TopicPolicy").values()
                  if topic in refs(p["Properties"]["Topics"])
                  for st in p["Properties"]["PolicyDocument"]["Statement"]]
    assert any(st["Effect"] == "Allow" and st["Action"] == "sns:Publish"
               and st["Principal"] == {"Service": "events.amazonaws.com"}
               for st in statements), statements


def test_undelivered_events_alarm_on_the_fleets_own_targets(default: Synth) -> None:
    from infra.alarms import WORKER_METRICS_NAMESPACE

    (alarm,) = [a for a in default.resources("AWS::CloudWatch::Alarm").values()
                if "Events not delivered" in json.dumps(a)]
    props = alarm["Properties"]
    stats = [q["MetricStat"] for q in props["Metrics"] if "MetricStat" in q]
    # The worker's EMF metric has a Target dimension: an alarm must name each value.
    assert sorted(s["Metric"]["Dimensions"][0]["Value"] for s in stats) == ["sns", "webhook"]
    assert {(s["Metric"]["Namespace"], s["Metric"]["MetricName"]) for s in stats} == {
        (WORKER_METRICS_NAMESPACE, "EventsUndelivered")}
    assert props["Threshold"] == 0
    assert props["ComparisonOperator"] == "GreaterThanThreshold"
    assert refs(props["AlarmActions"]) == {default.alarm_topic_id()}


# A service's and an Auto Scaling group's scaling policies (the idle alarm sets both).
SCALING_POLICY_TYPES = {"AWS::ApplicationAutoScaling::ScalingPolicy",
                        "AWS::AutoScaling::ScalingPolicy"}


def test_every_alarm_notifies_the_alarm_topic() -> None:
    s = synth(EVERYTHING_ON)
    topic = s.alarm_topic_id()
    # Scaling's own alarms act on scaling policies; every other alarm needs a person.
    for alarm in s.alarms():
        actions = refs(alarm.get("AlarmActions", []))
        if actions and all(s.json["Resources"][a]["Type"] in SCALING_POLICY_TYPES
                           for a in actions):
            continue
        assert topic in actions, alarm.get("AlarmDescription")


# -- images a deployment can always pull -------------------------------------------------

def test_image_tags_are_immutable_and_only_untagged_images_expire(default: Synth) -> None:
    _, repository = default.one("AWS::ECR::Repository")
    assert repository["ImageTagMutability"] == "IMMUTABLE"
    rules = json.loads(repository["LifecyclePolicy"]["LifecyclePolicyText"])["rules"]
    assert rules, "no lifecycle rule: failed pushes would pile up"
    for rule in rules:
        # A count rule, or one over tagged images, could expire the digest a deployment
        # pins; untagged ones by age cannot.
        assert rule["selection"]["tagStatus"] == "untagged", rule
        assert rule["selection"]["countType"] == "sinceImagePushed", rule
        assert rule["selection"]["countNumber"] >= 1


# -- the root volume takes the image pull ------------------------------------------------

def test_root_volume_throughput_and_iops_are_raised_within_gp3_limits(
        default: Synth) -> None:
    _, launch_template = default.one("AWS::EC2::LaunchTemplate")
    (mapping,) = launch_template["LaunchTemplateData"]["BlockDeviceMappings"]
    ebs = mapping["Ebs"]
    assert ebs["VolumeType"] == "gp3"
    # Above gp3's baseline (3000 IOPS, 125 MiB/s), within its limits: at most 500 IOPS
    # per GiB, and 0.25 MiB/s of throughput per provisioned IOPS.
    assert 3000 < ebs["Iops"] <= min(16000, 500 * ebs["VolumeSize"])
    assert 125 < ebs["Throughput"] <= min(1000, ebs["Iops"] / 4)


# -- hygiene -----------------------------------------------------------------------------

def _recommended_feature_flags() -> dict[str, Any]:
    """The flags `cdk init` writes for a new app, from the installed aws-cdk-lib."""
    import aws_cdk

    (bundle,) = Path(aws_cdk.__file__).parent.glob("_jsii/aws-cdk-lib@*.jsii.tgz")
    with tarfile.open(bundle) as archive:
        member = archive.extractfile("package/recommended-feature-flags.json")
        assert member is not None
        return json.loads(member.read())


def test_cdk_json_sets_every_recommended_feature_flag() -> None:
    context = cdk_json_context()
    recommended = _recommended_feature_flags()
    assert "@aws-cdk/aws-ec2:restrictDefaultSecurityGroup" in recommended
    assert {k: context.get(k) for k in recommended} == recommended


def test_the_vpcs_default_security_group_is_restricted(default: Synth) -> None:
    (restrict,) = default.resources("Custom::VpcRestrictDefaultSG").values()
    (vpc_id,) = default.resources("AWS::EC2::VPC")
    assert refs(restrict["Properties"]["DefaultSecurityGroupId"]) == {vpc_id}


def test_scaling_uses_the_service_linked_role_not_an_empty_one(default: Synth) -> None:
    _, target = default.one("AWS::ApplicationAutoScaling::ScalableTarget")
    assert flat(target["RoleARN"]).endswith(
        ":role/aws-service-role/ecs.application-autoscaling.amazonaws.com/"
        "AWSServiceRoleForApplicationAutoScaling_ECSService")
    assertable = [json.dumps(r["Properties"]["AssumeRolePolicyDocument"])
                  for r in default.resources("AWS::IAM::Role").values()]
    assert not any("application-autoscaling" in doc for doc in assertable)


def test_spot_draws_from_more_instance_types() -> None:
    _, group = synth(SPOT).one("AWS::AutoScaling::AutoScalingGroup")
    overrides = group["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    types = [o["InstanceType"] for o in overrides]
    assert {"g5.xlarge", "g6.xlarge", "g5.2xlarge", "g6.2xlarge", "g6e.xlarge"} <= set(types)
