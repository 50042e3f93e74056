"""The worker's task definition matches the image: user, writable paths, limits, health.

The image (Dockerfile) runs as 10001:10001, writes only to /tmp (its health file) and
/models (HF_HOME, IMG2IMG_MODEL_CACHE), and checks itself with `img2img-worker
healthcheck`. Checked on the on-demand and the Spot template.
"""

from __future__ import annotations

import pytest

from tests.support.infra_synth import Synth, flat, synth

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")

HEALTH_FILE = "/tmp/img2img-worker.health"  # the image's IMG2IMG_HEALTH_FILE


@pytest.fixture(scope="module", params=["on-demand", "spot"])
def template(request: pytest.FixtureRequest) -> Synth:
    return synth({"spot": "true"} if request.param == "spot" else {})


def test_container_runs_the_worker_with_its_settings(template: Synth) -> None:
    container = template.container()
    assert {"Type": "GPU", "Value": "1"} in container["ResourceRequirements"]
    env = template.env()
    assert container["HealthCheck"]["Command"] == ["CMD", "img2img-worker", "healthcheck"]
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    for name in ("IMG2IMG_QUEUE_URL", "IMG2IMG_ALLOWED_INPUTS", "IMG2IMG_ALLOWED_OUTPUTS",
                 "IMG2IMG_MODEL_CACHE", "HF_HOME", "AWS_REGION", "IMG2IMG_STOP_DEADLINE"):
        assert name in env, name
    bucket_id, _ = template.one("AWS::S3::Bucket")
    assert flat(env["IMG2IMG_ALLOWED_OUTPUTS"]) == f"s3://{{{bucket_id}}}/outputs/"
    assert flat(env["IMG2IMG_ALLOWED_INPUTS"]) == f"s3://{{{bucket_id}}}/inputs/"


def test_runs_as_the_images_non_root_user(template: Synth) -> None:
    from aws_cdk.assertions import Match

    template.template.has_resource_properties("AWS::ECS::TaskDefinition", {
        "ContainerDefinitions": [Match.object_like({
            "User": "10001:10001", "ReadonlyRootFilesystem": True,
            "HealthCheck": Match.object_like(
                {"Command": ["CMD", "img2img-worker", "healthcheck"]})})]})
    assert template.container()["User"] == "10001:10001"


def test_root_filesystem_is_read_only_with_writable_tmp_and_models(template: Synth) -> None:
    container = template.container()
    assert container["ReadonlyRootFilesystem"] is True
    (tmpfs,) = container["LinuxParameters"]["Tmpfs"]
    assert tmpfs["ContainerPath"] == "/tmp" and tmpfs["Size"] >= 256
    # exec: torch.compile loads the kernels it builds there; never setuid or devices.
    assert set(tmpfs["MountOptions"]) == {"exec", "nosuid", "nodev"}
    assert HEALTH_FILE.startswith(tmpfs["ContainerPath"] + "/")

    (mount,) = container["MountPoints"]
    assert mount["ContainerPath"] == "/models" and mount["ReadOnly"] is False
    _, task_def = template.one("AWS::ECS::TaskDefinition")
    (volume,) = task_def["Volumes"]
    assert volume["Name"] == mount["SourceVolume"]
    assert volume["DockerVolumeConfiguration"]["Scope"] == "shared"
    env = template.env()
    for name in ("HF_HOME", "IMG2IMG_MODEL_CACHE"):
        assert env[name].startswith("/models/"), name
    # Whatever caches under ~ lands on the tmpfs, not on the read-only image.
    assert env["HOME"] == "/tmp"


def test_memory_has_a_hard_limit_and_shared_memory_is_sized(template: Synth) -> None:
    container = template.container()
    assert container["MemoryReservation"] == 12288
    assert container["Memory"] == 14336
    # A 16 GiB g5/g6.xlarge keeps 2 GiB for the OS, Docker, the agent and the driver.
    assert container["Memory"] <= 16 * 1024 - 2048
    assert container["LinuxParameters"]["SharedMemorySize"] >= 1024  # Docker's default: 64
    assert container["LinuxParameters"]["InitProcessEnabled"] is True


def test_memory_settings_are_checked_against_the_instance_types() -> None:
    from infra.config import FleetConfig
    from infra.instance_types import instance_memory_mib

    assert instance_memory_mib("g5.xlarge") == 16 * 1024
    assert instance_memory_mib("g6.12xlarge") == 192 * 1024
    assert instance_memory_mib("g6e.2xlarge") == 64 * 1024
    assert instance_memory_mib("g6.metal") is None
    with pytest.raises(ValueError, match="taskMemoryLimitMiB"):
        FleetConfig.from_context({"taskMemoryLimitMiB": "15360"})  # 15 GiB on 16 GiB
    with pytest.raises(ValueError, match="taskMemoryLimitMiB"):
        FleetConfig.from_context({"taskMemoryMiB": "14336", "taskMemoryLimitMiB": "14336"})
    bigger = FleetConfig.from_context({"instanceTypes": "g6e.xlarge",
                                       "taskMemoryLimitMiB": "28672"})
    assert bigger.task_memory_limit_mib == 28672
