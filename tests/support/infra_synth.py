"""Synthesizing the CDK app offline for the infra tests, and reading its templates.

Each distinct context is synthesized once per test session (a synth takes seconds), so
the test modules can share the default, Spot and other variants.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO as ROOT

CDK_JSON = ROOT / "infra" / "cdk.json"

SPOT = {"spot": "true"}
WEBHOOK_SECRET_ARN = ("arn:aws:secretsmanager:us-east-1:111122223333:secret:"
                      "img2img/webhook-AbCdEf")
# Every optional part on, as `-c` would pass it.
EVERYTHING_ON = {
    "spot": "true", "priorityQueue": "true", "uploadsPrefix": "uploads",
    "outputExpirationDays": "30", "alarmEmail": "ops@example.com",
    "modelsUri": "s3://my-model-store/weights", "eventsEmail": "events@example.com",
    "eventsQueue": "true", "webhookUrl": "https://hooks.example.com/img2img",
    "webhookSecret": WEBHOOK_SECRET_ARN, "gpuPricePerHour": "1.006",
}

if str(ROOT) not in sys.path:  # `infra` is a top-level package of the repository
    sys.path.insert(0, str(ROOT))


def cdk_json_context() -> dict[str, Any]:
    return json.loads(CDK_JSON.read_text())["context"]


def silence_jsii() -> None:
    # Node 20 prints a banner on every jsii start; it is noise in test output.
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def refs(value: Any) -> set[str]:
    """Every logical id a CloudFormation value refers to (Ref / Fn::GetAtt)."""
    found: set[str] = set()
    if isinstance(value, dict):
        if "Ref" in value:
            found.add(value["Ref"])
        if "Fn::GetAtt" in value:
            found.add(value["Fn::GetAtt"][0])
        for v in value.values():
            found |= refs(v)
    elif isinstance(value, list):
        for v in value:
            found |= refs(v)
    return found


def flat(value: Any) -> str:
    """A CloudFormation value as text, Fn::Join parts concatenated (for prefix checks)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(flat(p) for p in parts)
    if isinstance(value, dict) and ("Ref" in value or "Fn::GetAtt" in value):
        return "{" + next(iter(refs(value))) + "}"
    return json.dumps(value, sort_keys=True)


class Synth:
    """One synthesized stack: its assertions Template and raw template dict."""

    def __init__(self, overrides: dict[str, Any], env: tuple[str, str] | None = None) -> None:
        silence_jsii()
        import aws_cdk as cdk
        from aws_cdk.assertions import Template

        from infra.app import build_app

        environment = cdk.Environment(account=env[0], region=env[1]) if env else None
        app = build_app(cdk.App(context={**cdk_json_context(), **overrides}), environment)
        (stack,) = [c for c in app.node.children if isinstance(c, cdk.Stack)]
        self.stack = stack
        self.template = Template.from_stack(stack)
        self.json: dict[str, Any] = self.template.to_json()

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.json["Resources"].items() if v["Type"] == type_}

    def one(self, type_: str) -> tuple[str, dict[str, Any]]:
        found = self.resources(type_)
        assert len(found) == 1, f"expected one {type_}, got {list(found)}"
        ((logical_id, resource),) = found.items()
        return logical_id, resource["Properties"]

    def container(self) -> dict[str, Any]:
        _, props = self.one("AWS::ECS::TaskDefinition")
        (container,) = props["ContainerDefinitions"]
        return container

    def env(self) -> dict[str, Any]:
        return {e["Name"]: e["Value"] for e in self.container()["Environment"]}

    def queue_ids(self) -> tuple[str, str]:
        """(main queue, its DLQ): the main queue is fed by the S3 notification or named
        by IMG2IMG_QUEUE_URL."""
        (main,) = refs(self.env()["IMG2IMG_QUEUE_URL"])
        queue = self.json["Resources"][main]["Properties"]
        (dlq,) = refs(queue["RedrivePolicy"]["deadLetterTargetArn"])
        return main, dlq

    def role_statements(self, role_id: str) -> list[dict[str, Any]]:
        """Every statement of the inline policies attached to a role."""
        return [st for p in self.resources("AWS::IAM::Policy").values()
                if role_id in refs(p["Properties"]["Roles"])
                for st in p["Properties"]["PolicyDocument"]["Statement"]]

    def task_role_id(self) -> str:
        _, task_def = self.one("AWS::ECS::TaskDefinition")
        (role_id,) = refs(task_def["TaskRoleArn"])
        return role_id

    def execution_role_id(self) -> str:
        _, task_def = self.one("AWS::ECS::TaskDefinition")
        (role_id,) = refs(task_def["ExecutionRoleArn"])
        return role_id

    def instance_role_id(self) -> str:
        _, lt = self.one("AWS::EC2::LaunchTemplate")
        (profile_id,) = refs(lt["LaunchTemplateData"]["IamInstanceProfile"])
        profile = self.json["Resources"][profile_id]["Properties"]
        (role_id,) = refs(profile["Roles"])
        return role_id

    def granted(self, role_id: str) -> dict[str, list[dict[str, Any]]]:
        """Action -> the statements that allow it, for one role."""
        by_action: dict[str, list[dict[str, Any]]] = {}
        for st in self.role_statements(role_id):
            assert st["Effect"] == "Allow", st
            for action in as_list(st["Action"]):
                by_action.setdefault(action, []).append(st)
        return by_action

    def topic_id(self, display_name: str) -> str:
        (topic_id,) = [k for k, v in self.resources("AWS::SNS::Topic").items()
                       if v["Properties"].get("DisplayName") == display_name]
        return topic_id

    def alarm_topic_id(self) -> str:
        return self.topic_id("img2img fleet alarms")

    def events_topic_id(self) -> str:
        return self.topic_id("img2img fleet events")

    def alarms(self) -> list[dict[str, Any]]:
        return [a["Properties"] for a in self.resources("AWS::CloudWatch::Alarm").values()]


@functools.cache
def _synth(overrides_json: tuple[tuple[str, str], ...], env: tuple[str, str] | None) -> Synth:
    return Synth({k: json.loads(v) for k, v in overrides_json}, env)


def synth(overrides: dict[str, Any] | None = None, *,
          env: tuple[str, str] | None = None) -> Synth:
    """The stack for cdk.json's context plus ``overrides`` (values as ``-c`` gives them),
    environment-agnostic unless ``env`` gives an (account, region)."""
    pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")
    return _synth(tuple(sorted((k, json.dumps(v)) for k, v in (overrides or {}).items())), env)


def cfn_lint_path() -> str:
    candidate = Path(sys.executable).with_name("cfn-lint")
    found = str(candidate) if candidate.exists() else shutil.which("cfn-lint")
    if not found:
        pytest.fail("cfn-lint not found: install the dev extra")
    return found


def cfn_lint(template: dict[str, Any], path: Path) -> subprocess.CompletedProcess[str]:
    path.write_text(json.dumps(template, indent=1))
    return subprocess.run([cfn_lint_path(), "--format", "parseable", str(path)],
                          capture_output=True, text=True, timeout=300)
