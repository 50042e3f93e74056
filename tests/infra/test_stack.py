"""The CDK stack, synthesized offline: properties asserted, template cfn-lint clean.

Templates come from tests/support/infra_synth.py (each context synthesized once per session): the
defaults from infra/cdk.json (on-demand, no upload notification) and a variant (Spot,
uploads prefix, output expiry, maxTasks 8).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.infra_synth import (
    CDK_JSON,
    Synth,
    cdk_json_context,
    refs,
    synth,
)
from tests.support.infra_synth import flat as _flat
from tests.support.infra_synth import refs as _refs

VARIANT = {"spot": "true", "uploadsPrefix": "uploads", "outputExpirationDays": "30",
           "maxTasks": "8", "alarmEmail": "ops@example.com",
           "modelsUri": "s3://my-model-store/weights"}

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")


@pytest.fixture(scope="module")
def default() -> Synth:
    return synth()


@pytest.fixture(scope="module")
def variant() -> Synth:
    return synth(VARIANT)


def _queue_ids(s: Synth) -> tuple[str, str]:
    """(main queue, DLQ) logical ids."""
    return s.queue_ids()


# -- S3 ----------------------------------------------------------------------------------

def test_bucket_encrypted_private_tls_only(default: Synth) -> None:
    bucket_id, props = default.one("AWS::S3::Bucket")
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True,
        "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    _, policy = default.one("AWS::S3::BucketPolicy")
    assert bucket_id in _refs(policy["Bucket"])
    denies = [s for s in policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert any(s["Condition"].get("Bool", {}).get("aws:SecureTransport") == "false"
               and s["Action"] == "s3:*" for s in denies)


def test_output_lifecycle_is_optional(default: Synth, variant: Synth) -> None:
    def expiring(s: Synth) -> list[dict[str, Any]]:
        _, props = s.one("AWS::S3::Bucket")
        rules = props.get("LifecycleConfiguration", {}).get("Rules", [])
        return [r for r in rules if "ExpirationInDays" in r]

    assert expiring(default) == []
    (rule,) = expiring(variant)
    assert rule["Prefix"] == "outputs/" and rule["ExpirationInDays"] == 30


def test_upload_notification_is_optional_and_feeds_the_main_queue(
        default: Synth, variant: Synth) -> None:
    assert default.resources("Custom::S3BucketNotifications") == {}
    assert "IMG2IMG_ALLOWED_INPUTS" in default.env()
    assert "uploads/" not in _flat(default.env()["IMG2IMG_ALLOWED_INPUTS"])

    (notification,) = variant.resources("Custom::S3BucketNotifications").values()
    (config,) = notification["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    main_queue, _ = _queue_ids(variant)
    assert _refs(config["QueueArn"]) == {main_queue}
    assert config["Events"] == ["s3:ObjectCreated:*"]
    rules = config["Filter"]["Key"]["FilterRules"]
    assert {"Name": "prefix", "Value": "uploads/"} in rules
    # The worker must be allowed to read what the notification points it at.
    assert _flat(variant.env()["IMG2IMG_ALLOWED_INPUTS"]).endswith("/uploads/")


# -- SQS ---------------------------------------------------------------------------------

def test_queue_and_dlq(default: Synth) -> None:
    main_id, dlq_id = _queue_ids(default)
    queues = default.resources("AWS::SQS::Queue")
    main, dlq = queues[main_id]["Properties"], queues[dlq_id]["Properties"]
    assert main["SqsManagedSseEnabled"] is True and dlq["SqsManagedSseEnabled"] is True
    assert main["ReceiveMessageWaitTimeSeconds"] == 20
    assert main["RedrivePolicy"]["maxReceiveCount"] == 5
    assert _refs(main["RedrivePolicy"]["deadLetterTargetArn"]) == {dlq_id}
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    for policy in default.resources("AWS::SQS::QueuePolicy").values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(s["Effect"] == "Deny" and
                   s["Condition"]["Bool"]["aws:SecureTransport"] == "false" for s in statements)


def test_visibility_timeout_matches_worker_heartbeat(default: Synth) -> None:
    main_id, _ = _queue_ids(default)
    queue = default.resources("AWS::SQS::Queue")[main_id]["Properties"]
    env = default.env()
    assert int(env["IMG2IMG_VISIBILITY_TIMEOUT"]) == queue["VisibilityTimeout"] == 120
    # The heartbeat extends every third of the timeout: at least two beats per window.
    assert queue["VisibilityTimeout"] / 3 >= 10
    assert env["IMG2IMG_RECEIVE_WAIT_SECONDS"] == "20"
    assert _refs(env["IMG2IMG_QUEUE_URL"]) == {main_id}


# -- ECS ---------------------------------------------------------------------------------

def test_gpu_capacity_on_demand_by_default(default: Synth) -> None:
    _, asg = default.one("AWS::AutoScaling::AutoScalingGroup")
    policy = asg["MixedInstancesPolicy"]
    overrides = [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]]
    assert overrides and all(re.match(r"g(5|6)\.", t) for t in overrides), overrides
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100
    assert asg["MinSize"] == "0" and asg["MaxSize"] == "4"
    _, lt = default.one("AWS::EC2::LaunchTemplate")
    data = lt["LaunchTemplateData"]
    (param,) = _refs(data["ImageId"])
    assert "gpu" in param.lower() and "ecsoptimizedami" in param.lower()
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING" not in _flat(data["UserData"])


def test_spot_through_context(variant: Synth) -> None:
    _, asg = variant.one("AWS::AutoScaling::AutoScalingGroup")
    dist = asg["MixedInstancesPolicy"]["InstancesDistribution"]
    assert dist["OnDemandPercentageAboveBaseCapacity"] == 0
    assert dist["SpotAllocationStrategy"] == "price-capacity-optimized"
    assert asg["MaxSize"] == "8"
    _, lt = variant.one("AWS::EC2::LaunchTemplate")
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true" in _flat(lt["LaunchTemplateData"]["UserData"])


def test_capacity_provider_managed_scaling_and_draining(default: Synth) -> None:
    cp_id, cp = default.one("AWS::ECS::CapacityProvider")
    provider = cp["AutoScalingGroupProvider"]
    assert provider["ManagedScaling"]["Status"] == "ENABLED"
    assert provider["ManagedDraining"] == "ENABLED"
    asg_id, _ = default.one("AWS::AutoScaling::AutoScalingGroup")
    assert _refs(provider["AutoScalingGroupArn"]) == {asg_id}
    _, service = default.one("AWS::ECS::Service")
    (strategy,) = service["CapacityProviderStrategy"]
    assert _refs(strategy["CapacityProvider"]) == {cp_id}
    assert service["DesiredCount"] == 0
    # Created only after the capacity provider is associated with the cluster.
    (association,) = default.resources("AWS::ECS::ClusterCapacityProviderAssociations")
    (service_id,) = default.resources("AWS::ECS::Service")
    assert association in default.json["Resources"][service_id]["DependsOn"]


# -- IAM ---------------------------------------------------------------------------------

def test_task_role_is_least_privilege(default: Synth) -> None:
    _, task_def = default.one("AWS::ECS::TaskDefinition")
    (role_id,) = _refs(task_def["TaskRoleArn"])
    policies = [p["Properties"] for p in default.resources("AWS::IAM::Policy").values()
                if role_id in _refs(p["Properties"]["Roles"])]
    assert default.resources("AWS::IAM::Role")[role_id]["Properties"].get(
        "ManagedPolicyArns") is None
    statements = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    granted: dict[str, set[str]] = {}
    for s in statements:
        assert s["Effect"] == "Allow"
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        for action in actions:
            assert "*" not in action, action
            granted.setdefault(action, set()).update(_flat(r) for r in resources)
    bucket_id, _ = default.one("AWS::S3::Bucket")
    main_queue, _ = _queue_ids(default)
    cluster_id, _ = default.one("AWS::ECS::Cluster")
    own_tasks = ("arn:{AWS::Partition}:ecs:{AWS::Region}:{AWS::AccountId}:task/"
                 f"{{{cluster_id}}}/*")
    assert granted == {
        "s3:GetObject": {f"{{{bucket_id}}}/inputs/*", f"{{{bucket_id}}}/outputs/*"},
        "s3:PutObject": {f"{{{bucket_id}}}/outputs/*"},
        "s3:DeleteObject": {f"{{{bucket_id}}}/outputs/*.json"},  # claims, not outputs
        "s3:ListBucket": {f"{{{bucket_id}}}"},
        "sqs:ReceiveMessage": {f"{{{main_queue}}}"},
        "sqs:DeleteMessage": {f"{{{main_queue}}}"},
        "sqs:ChangeMessageVisibility": {f"{{{main_queue}}}"},
        "ecs:UpdateTaskProtection": {own_tasks},
        "ecs:GetTaskProtection": {own_tasks},
        "sns:Publish": {f"{{{default.events_topic_id()}}}"},
    }


def test_no_wildcard_actions_anywhere(default: Synth, variant: Synth) -> None:
    for s in (default, variant):
        for logical_id, policy in s.resources("AWS::IAM::Policy").items():
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions = statement["Action"]
                actions = actions if isinstance(actions, list) else [actions]
                assert "*" not in actions and not any(a.endswith(":*") for a in actions), (
                    logical_id, actions)


def _task_role_statements(s: Synth, action: str) -> list[dict[str, Any]]:
    _, task_def = s.one("AWS::ECS::TaskDefinition")
    (role_id,) = _refs(task_def["TaskRoleArn"])
    return [st for p in s.resources("AWS::IAM::Policy").values()
            if role_id in _refs(p["Properties"]["Roles"])
            for st in p["Properties"]["PolicyDocument"]["Statement"]
            if st["Action"] == action]


def test_variant_task_role_reads_uploads(variant: Synth) -> None:
    bucket_id, _ = variant.one("AWS::S3::Bucket")
    reads = [_flat(r) for st in _task_role_statements(variant, "s3:GetObject")
             for r in (st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]])]
    own = sorted(r.rsplit("/", 2)[-2] for r in reads if r.startswith(f"{{{bucket_id}}}"))
    assert own == ["inputs", "outputs", "uploads"]
    (listing,) = [st for st in _task_role_statements(variant, "s3:ListBucket")
                  if _flat(st["Resource"]) == f"{{{bucket_id}}}"]
    assert sorted(listing["Condition"]["StringLike"]["s3:prefix"]) == [
        "inputs/*", "outputs/*", "uploads/*"]


def test_models_uri_grants_read_of_that_prefix_only_and_allows_its_models(
        default: Synth, variant: Synth) -> None:
    (read,) = [st for st in _task_role_statements(variant, "s3:GetObject")
               if "my-model-store" in _flat(st["Resource"])]
    assert _flat(read["Resource"]) == "arn:{AWS::Partition}:s3:::my-model-store/weights/*"
    (listing,) = [st for st in _task_role_statements(variant, "s3:ListBucket")
                  if "my-model-store" in _flat(st["Resource"])]
    assert _flat(listing["Resource"]) == "arn:{AWS::Partition}:s3:::my-model-store"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["weights/*"]}}
    assert variant.env()["IMG2IMG_ALLOWED_MODELS"] == "sd15,s3://my-model-store/weights/*"
    # Without modelsUri: no model store grant, and the worker keeps its built-in aliases.
    assert not [st for st in _task_role_statements(default, "s3:GetObject")
                if "arn:" in _flat(st["Resource"])]
    assert "IMG2IMG_ALLOWED_MODELS" not in default.env()


# -- alarms and outputs ------------------------------------------------------------------

def test_alarms(default: Synth, variant: Synth) -> None:
    main_id, dlq_id = _queue_ids(default)
    alarms = [a["Properties"] for a in default.resources("AWS::CloudWatch::Alarm").values()]
    topic_id = default.alarm_topic_id()
    dlq_alarm = [a for a in alarms if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"
                 and _refs(a["Dimensions"]) == {dlq_id}]
    (dlq_alarm_props,) = dlq_alarm
    assert dlq_alarm_props["Threshold"] == 0
    assert dlq_alarm_props["ComparisonOperator"] == "GreaterThanThreshold"
    assert _refs(dlq_alarm_props["AlarmActions"]) == {topic_id}
    (age,) = [a for a in alarms if a.get("MetricName") == "ApproximateAgeOfOldestMessage"]
    assert _refs(age["Dimensions"]) == {main_id}
    assert age["Threshold"] == 3600 and _refs(age["AlarmActions"]) == {topic_id}
    _, subscription = variant.one("AWS::SNS::Subscription")
    assert subscription["Protocol"] == "email" and subscription["Endpoint"] == "ops@example.com"
    assert refs(subscription["TopicArn"]) == {variant.alarm_topic_id()}
    assert default.resources("AWS::SNS::Subscription") == {}


def test_outputs(default: Synth) -> None:
    outputs = default.json["Outputs"]
    main_id, dlq_id = _queue_ids(default)
    bucket_id, _ = default.one("AWS::S3::Bucket")
    cluster_id, _ = default.one("AWS::ECS::Cluster")
    service_id, _ = default.one("AWS::ECS::Service")
    asg_id, _ = default.one("AWS::AutoScaling::AutoScalingGroup")
    expected = {"BucketName": bucket_id, "QueueUrl": main_id, "DlqUrl": dlq_id,
                "ClusterName": cluster_id, "ServiceName": service_id,
                "AutoScalingGroupName": asg_id}
    for name, logical_id in expected.items():
        assert _refs(outputs[name]["Value"]) == {logical_id}, name


# -- the CDK entry point ---------------------------------------------------------------

@pytest.mark.slow
def test_app_entry_point_synthesizes_with_cdk_json(tmp_path: Path) -> None:
    """What `cdk synth` runs: infra/app.py, with cdk.json's context passed by the CLI."""
    env = {**os.environ, "CDK_OUTDIR": str(tmp_path),
           "CDK_CONTEXT_JSON": json.dumps(cdk_json_context()),
           "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1"}
    app_cmd = json.loads(CDK_JSON.read_text())["app"].split()
    assert app_cmd[-1] == "app.py"
    result = subprocess.run([sys.executable, app_cmd[-1]], cwd=CDK_JSON.parent, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    template = json.loads((tmp_path / "Img2ImgFleet.template.json").read_text())
    assert "QueueUrl" in template["Outputs"]
