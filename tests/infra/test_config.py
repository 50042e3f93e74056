"""The CDK context as a validated model: JSON from cdk.json, strings from `-c`, errors
that name the context key, and unknown keys refused (CDK's own keys left alone)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.infra_synth import CDK_JSON, ROOT, cdk_json_context

pytest.importorskip("pydantic")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from infra.config import (  # noqa: E402
    CAPACITY_DEFAULTS,
    CONTEXT_KEYS,
    ContextError,
    FleetConfig,
    context_key,
)

# What the CDK CLI itself puts in an app's context next to cdk.json's keys.
CDK_OWN_CONTEXT = {
    "aws:cdk:enable-path-metadata": True,
    "aws:cdk:enable-asset-metadata": True,
    "aws:cdk:version-reporting": True,
    "aws:cdk:bundling-stacks": ["**"],
    "@aws-cdk/core:newStyleStackSynthesis": True,
    "@aws-cdk/aws-ecs:arnFormatIncludesClusterName": True,
    "availability-zones:account=111122223333:region=us-east-1": ["us-east-1a"],
    "acknowledged-issue-numbers": [32775],
}


def test_cdk_json_and_its_string_form_give_the_same_config() -> None:
    as_json = cdk_json_context()
    as_strings = {k: (",".join(v) if isinstance(v, list) else
                      str(v).lower() if isinstance(v, bool) else str(v))
                  for k, v in as_json.items()}  # what `-c key=value` would pass
    assert FleetConfig.from_context(as_json) == FleetConfig.from_context(as_strings)
    assert FleetConfig.from_context(as_json) == FleetConfig()  # cdk.json = the defaults


def test_strings_are_converted_like_the_command_line_gives_them() -> None:
    config = FleetConfig.from_context(
        {"spot": "false", "instanceTypes": "g6.2xlarge, g5.2xlarge", "inputPrefix": "in",
         "maxTasks": "2", "taskMemoryMiB": "8192", "defaultModels": "sd15, sdxl"})
    assert config.spot is False and config.instance_types == ("g6.2xlarge", "g5.2xlarge")
    assert config.input_prefix == "in/" and config.max_tasks == 2
    assert config.task_memory_mib == 8192 and config.default_models == "sd15,sdxl"
    assert FleetConfig.from_context({"spot": "true"}).spot is True


def test_unknown_key_is_an_error_naming_it_and_the_known_keys() -> None:
    with pytest.raises(ContextError) as caught:
        FleetConfig.from_context({**cdk_json_context(), "maxTask": "8"})
    message = str(caught.value)
    assert "'maxTask'" in message and "did you mean 'maxTasks'" in message
    assert all(key in message for key in CONTEXT_KEYS)
    with pytest.raises(ContextError, match="'max_tasks'"):
        FleetConfig.from_context({"max_tasks": 8})


def test_cdk_own_context_keys_are_not_ours_to_refuse() -> None:
    config = FleetConfig.from_context({**cdk_json_context(), **CDK_OWN_CONTEXT})
    assert config == FleetConfig()


def test_errors_name_the_context_key_and_value() -> None:
    with pytest.raises(ContextError) as caught:
        FleetConfig.from_context({"maxTasks": "abc", "spot": "maybe", "taskMemoryMiB": "0"})
    message = str(caught.value)
    assert "maxTasks:" in message and "'abc'" in message
    assert "spot:" in message and "'maybe'" in message
    assert "taskMemoryMiB:" in message  # camelCase, not task_memory_mib
    assert "task_memory_mib" not in message and "max_tasks" not in message
    with pytest.raises(ContextError, match="instanceTypes"):
        FleetConfig.from_context({"instanceTypes": "p4d.24xlarge"})
    with pytest.raises(ContextError, match="logRetentionDays"):
        FleetConfig.from_context({"logRetentionDays": "31"})


def test_settings_that_must_fit_together_are_refused() -> None:
    with pytest.raises(ValueError, match="stopDeadline"):
        FleetConfig(stop_deadline=120, stop_timeout=120)
    with pytest.raises(ValueError, match="nest"):
        FleetConfig(input_prefix="data/", output_prefix="data/out/")
    with pytest.raises(ContextError, match="inputPrefix"):
        FleetConfig.from_context({"inputPrefix": ""})


def test_capacity_dependent_defaults() -> None:
    on_demand, spot = FleetConfig(), FleetConfig(spot=True)
    for name, defaults in CAPACITY_DEFAULTS.items():
        assert getattr(on_demand, name) == defaults["on-demand"], name
        assert getattr(spot, name) == defaults["spot"], name
        assert context_key(name) not in cdk_json_context(), "its default depends on spot"
    assert FleetConfig.from_context({"spot": "true", "maxReceiveCount": "6"}
                                    ).max_receive_count == 6


def test_models_uri_and_allowed_models() -> None:
    with pytest.raises(ContextError, match="modelsUri"):
        FleetConfig.from_context({"modelsUri": "my-model-store/weights"})
    config = FleetConfig.from_context({"modelsUri": "s3://store/w",
                                       "allowedModels": "sd15, sdxl", "defaultModels": "sd15"})
    assert config.models_uri == "s3://store/w/"
    assert config.worker_allowed_models == "sd15,sdxl,s3://store/w/*"
    assert FleetConfig(allowed_models="sd-turbo").worker_allowed_models == "sd-turbo"
    assert FleetConfig().worker_allowed_models is None


def test_every_key_is_documented_and_cdk_json_sets_only_known_keys() -> None:
    # Besides ours, cdk.json holds CDK's feature flags (tests/infra/test_feature_flags.py).
    ours = {k for k in cdk_json_context() if not k.startswith(("@aws-cdk/", "@aws-cdk-"))}
    assert ours <= set(CONTEXT_KEYS)
    missing_from_json = set(CONTEXT_KEYS) - ours
    assert missing_from_json == {context_key(n) for n in CAPACITY_DEFAULTS}
    docs = (ROOT / "docs" / "deploy.md").read_text()
    table = docs[docs.index("### Context keys"):]
    assert [k for k in CONTEXT_KEYS if f"| `{k}` |" not in table] == []


@pytest.mark.slow
def test_cdk_app_refuses_a_mistyped_key(tmp_path: Path) -> None:
    """What `cdk synth -c maxTask=8` runs: app.py with the CLI's context, one key wrong."""
    context = {**cdk_json_context(), **CDK_OWN_CONTEXT, "maxTask": "8"}
    env = {**os.environ, "CDK_OUTDIR": str(tmp_path), "CDK_CONTEXT_JSON": json.dumps(context),
           "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
           "JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION": "1"}
    result = subprocess.run([sys.executable, "app.py"], cwd=CDK_JSON.parent, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "unknown context key 'maxTask' (did you mean 'maxTasks'?)" in result.stderr
    assert "Traceback" not in result.stderr
