"""GPU capacity: AZs to launch in, and the NVIDIA driver check that gates placement."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support.infra_synth import Synth, flat, synth

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")

ACCOUNT, REGION = "111122223333", "us-east-1"
# What `cdk synth` with credentials caches in cdk.context.json for this account/region.
AZ_LOOKUP = {f"availability-zones:account={ACCOUNT}:region={REGION}":
             [f"us-east-1{z}" for z in "abcdef"]}


def _subnet_azs(s: Synth) -> list[object]:
    return [r["Properties"]["AvailabilityZone"]
            for r in s.resources("AWS::EC2::Subnet").values()]


def _warnings(s: Synth) -> list[str]:
    from aws_cdk.assertions import Annotations, Match

    found = Annotations.from_stack(s.stack).find_warning("*", Match.any_value())
    return [str(w.entry.data) for w in found]


def test_with_an_environment_the_vpc_spans_max_azs() -> None:
    bound = synth(AZ_LOOKUP, env=(ACCOUNT, REGION))
    assert sorted(_subnet_azs(bound)) == ["us-east-1a", "us-east-1b", "us-east-1c"]
    assert not any("2 AZs" in w for w in _warnings(bound))
    wider = synth({**AZ_LOOKUP, "maxAzs": "5"}, env=(ACCOUNT, REGION))
    assert len(set(map(str, _subnet_azs(wider)))) == 5


def test_without_an_environment_two_azs_and_a_warning() -> None:
    agnostic = synth()
    azs = _subnet_azs(agnostic)
    assert len(azs) == 2 and all("Fn::GetAZs" in flat(az) for az in azs)
    assert any("2 AZs" in w for w in _warnings(agnostic))


@pytest.fixture(scope="module", params=["on-demand", "spot"])
def template(request: pytest.FixtureRequest) -> Synth:
    return synth({"spot": "true"} if request.param == "spot" else {})


def test_tasks_are_placed_only_where_the_driver_fits(template: Synth) -> None:
    from infra.capacity import driver_check_commands

    _, task_def = template.one("AWS::ECS::TaskDefinition")
    assert task_def["PlacementConstraints"] == [
        {"Type": "memberOf", "Expression": "attribute:img2img.driver-ok == true"}]
    _, lt = template.one("AWS::EC2::LaunchTemplate")
    user_data = flat(lt["LaunchTemplateData"]["UserData"]["Fn::Base64"])
    assert "\n".join(driver_check_commands(580)) in user_data


def _run_driver_check(tmp_path: Path, nvidia_smi: str | None, min_major: int = 580) -> dict:
    from infra.capacity import driver_check_commands

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("seq", "head", "tr", "sleep"):
        (bin_dir / tool).symlink_to(next(Path(d) / tool for d in ("/usr/bin", "/bin")
                                         if (Path(d) / tool).exists()))
    if nvidia_smi is not None:
        stub = bin_dir / "nvidia-smi"
        stub.write_text(f"#!/bin/sh\n{nvidia_smi}\n")
        stub.chmod(0o755)
    config = tmp_path / "ecs.config"
    config.write_text("ECS_CLUSTER=fleet\n")
    script = tmp_path / "user-data.sh"
    script.write_text("\n".join(driver_check_commands(
        min_major, ecs_config=str(config), attempts=2, pause_seconds=0)) + "\n")
    result = subprocess.run(["/bin/bash", str(script)], capture_output=True, text=True,
                            env={**os.environ, "PATH": str(bin_dir)}, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = config.read_text().splitlines()
    assert lines[0] == "ECS_CLUSTER=fleet"
    (attributes,) = [line for line in lines if line.startswith("ECS_INSTANCE_ATTRIBUTES=")]
    return json.loads(attributes.split("=", 1)[1])


def test_driver_check_accepts_a_new_enough_driver(tmp_path: Path) -> None:
    assert _run_driver_check(tmp_path, "echo 580.65.06") == {
        "img2img.nvidia-driver": "580.65.06", "img2img.driver-ok": "true"}


def test_driver_check_refuses_an_older_driver(tmp_path: Path) -> None:
    assert _run_driver_check(tmp_path, "echo 570.172.08") == {
        "img2img.nvidia-driver": "570.172.08", "img2img.driver-ok": "false"}
    assert _run_driver_check(tmp_path / "cuda12", "echo 570.172.08", min_major=570)[
        "img2img.driver-ok"] == "true"


def test_driver_check_without_a_working_nvidia_smi(tmp_path: Path) -> None:
    # Missing binary, and nvidia-smi's own failure text on stdout: never an attribute value
    # the agent would refuse to register with.
    assert _run_driver_check(tmp_path, None) == {
        "img2img.nvidia-driver": "unknown", "img2img.driver-ok": "false"}
    failing = "echo 'NVIDIA-SMI has failed because it could not communicate with the driver'"
    assert _run_driver_check(tmp_path / "failing", failing) == {
        "img2img.nvidia-driver": "unknown", "img2img.driver-ok": "false"}
