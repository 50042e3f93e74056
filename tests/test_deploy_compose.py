"""docker-compose.yml: the local fleet's structure, wiring and one-shot setup script.

The compose file is parsed as YAML (no Docker engine here); `docker compose config` also
runs when a compose CLI is installed. The setup script runs against an in-process moto.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
INIT_SCRIPT = ROOT / "compose" / "init_aws.py"
LIST_SCRIPT = ROOT / "compose" / "list_outputs.py"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on must state conditions"
    return {name: spec["condition"] for name, spec in deps.items()}


def _arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_services_present(services: dict[str, Any]) -> None:
    assert set(services) == {"aws", "init", "worker", "worker-gpu", "producer"}


def test_emulator_is_pinned_and_healthchecked(services: dict[str, Any]) -> None:
    aws = services["aws"]
    name, _, tag = aws["image"].partition(":")
    assert name in {"motoserver/moto", "localstack/localstack"}
    assert tag and tag != "latest" and tag[0].isdigit(), aws["image"]
    assert aws["healthcheck"]["test"][0] == "CMD"


def test_dependency_order(services: dict[str, Any]) -> None:
    assert _depends(services["init"]) == {"aws": "service_healthy"}
    for name in ("worker", "worker-gpu", "producer"):
        assert _depends(services[name]) == {"init": "service_completed_successfully"}, name
    assert services["init"]["restart"] == "no" and services["producer"]["restart"] == "no"


def test_init_creates_what_the_worker_uses(services: dict[str, Any]) -> None:
    init = services["init"]
    assert init["entrypoint"] == ["python", "/compose/init_aws.py"]
    assert "./compose:/compose:ro" in init["volumes"]
    env = init["environment"]
    bucket, queue = env["FLEET_BUCKET"], env["FLEET_QUEUE"]
    assert int(env["FLEET_MAX_RECEIVE_COUNT"]) == 3
    for name in ("worker", "worker-gpu"):
        worker_env = services[name]["environment"]
        assert worker_env["IMG2IMG_QUEUE_URL"].endswith(f"/{queue}")
        assert worker_env["IMG2IMG_QUEUE_URL"].startswith(worker_env["AWS_ENDPOINT_URL"])
        assert worker_env["IMG2IMG_ALLOWED_INPUTS"].startswith(f"s3://{bucket}/")
        assert worker_env["IMG2IMG_ALLOWED_OUTPUTS"].startswith(f"s3://{bucket}/")
        assert worker_env["IMG2IMG_VISIBILITY_TIMEOUT"] == env["FLEET_VISIBILITY_TIMEOUT"]


def test_cpu_worker_by_default_gpu_by_profile(services: dict[str, Any]) -> None:
    cpu, gpu = services["worker"], services["worker-gpu"]
    assert "profiles" not in cpu, "the CPU worker must start with a plain `docker compose up`"
    assert cpu["environment"]["IMG2IMG_DEVICE"] == "cpu"
    assert cpu["environment"]["IMG2IMG_DEFAULT_MODELS"] == "tiny"
    assert gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["IMG2IMG_DEVICE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in cpu
    for worker in (cpu, gpu):
        assert "models:/models" in worker["volumes"]
        # ECS-like shutdown: the grace period covers the worker's stop deadline.
        grace = int(worker["stop_grace_period"].rstrip("s"))
        assert grace > float(worker["environment"]["IMG2IMG_STOP_DEADLINE"])


def test_producer_enqueues_the_sample_images(services: dict[str, Any]) -> None:
    producer = services["producer"]
    assert producer["entrypoint"] == ["img2img-producer"]
    command = producer["command"]
    assert command[0] == "enqueue"
    source = command[1]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in producer["volumes"]}
    assert mounts[source] == "./data/input_images"
    bucket, upload = _arg(command, "--bucket"), _arg(command, "--upload-prefix")
    worker_env = services["worker"]["environment"]
    # What the producer uploads and where it asks for results must be allowed by the worker.
    assert f"s3://{bucket}/{upload}" in worker_env["IMG2IMG_ALLOWED_INPUTS"].split(",")
    assert _arg(command, "--output") in worker_env["IMG2IMG_ALLOWED_OUTPUTS"].split(",")
    assert _arg(command, "--model") in worker_env["IMG2IMG_ALLOWED_MODELS"].split(",")
    assert _arg(command, "--queue-url") == worker_env["IMG2IMG_QUEUE_URL"]


def test_all_images_come_from_this_dockerfile(services: dict[str, Any]) -> None:
    built = {name: s for name, s in services.items() if "build" in s}
    assert set(built) == {"init", "worker", "worker-gpu", "producer"}
    assert {s["image"] for s in built.values()} == {"img2img-fleet-worker:local"}
    for service in built.values():
        assert (ROOT / service["build"]["context"] / "Dockerfile").is_file()
    assert "models" in (yaml.safe_load(COMPOSE.read_text()).get("volumes") or {})


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=30).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize("profile_args", [[], ["--profile", "gpu"]])
def test_compose_config_validates(profile_args: list[str]) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip(reason="no compose CLI installed (docker compose plugin or docker-compose)")
    result = subprocess.run([*cli, "-f", str(COMPOSE), *profile_args, "config", "--services"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    # Compose v2 lists only the active profile's services; docker-compose 1.x lists all.
    assert {"aws", "init", "worker", "producer"} <= listed
    assert listed <= {"aws", "init", "worker", "producer", "worker-gpu"}
    if profile_args:
        assert "worker-gpu" in listed


# -- the one-shot setup script against an in-process moto server --------------------------

@pytest.fixture(scope="module")
def moto_env() -> Iterator[dict[str, str]]:
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**os.environ, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
           "FLEET_BUCKET": "img2img-test", "FLEET_QUEUE": "jobs", "FLEET_DLQ": "jobs-dlq"}
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        env.pop(var, None)
    yield env
    server.stop()


def _run(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_init_script_creates_bucket_queue_and_dlq_idempotently(
        moto_env: dict[str, str]) -> None:
    import boto3

    first = _run(INIT_SCRIPT, moto_env)
    assert first.returncode == 0, first.stderr
    second = _run(INIT_SCRIPT, moto_env)
    assert second.returncode == 0, second.stderr
    assert json.loads(first.stdout) == json.loads(second.stdout)
    urls = json.loads(first.stdout)

    kwargs = {"endpoint_url": moto_env["AWS_ENDPOINT_URL"], "region_name": "us-east-1",
              "aws_access_key_id": "local", "aws_secret_access_key": "local"}
    s3 = boto3.client("s3", **kwargs)
    assert "img2img-test" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    sqs = boto3.client("sqs", **kwargs)
    assert {q.rsplit("/", 1)[1] for q in sqs.list_queues()["QueueUrls"]} >= {"jobs", "jobs-dlq"}
    attrs = sqs.get_queue_attributes(QueueUrl=urls["queue_url"],
                                     AttributeNames=["All"])["Attributes"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=urls["dlq_url"], AttributeNames=["All"])
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn["Attributes"]["QueueArn"]
    assert int(redrive["maxReceiveCount"]) == 3
    assert attrs["VisibilityTimeout"] == "120"
    assert attrs["ReceiveMessageWaitTimeSeconds"] == "20"
    assert dlq_arn["Attributes"]["MessageRetentionPeriod"] == str(14 * 24 * 3600)


def test_list_outputs_reports_result_records(moto_env: dict[str, str]) -> None:
    import boto3

    assert _run(INIT_SCRIPT, moto_env).returncode == 0
    empty = _run(LIST_SCRIPT, moto_env)
    assert empty.returncode == 1 and "0 result records" in empty.stdout
    s3 = boto3.client("s3", endpoint_url=moto_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="local", aws_secret_access_key="local")
    s3.put_object(Bucket="img2img-test", Key="outputs/cat.abc.png", Body=b"png")
    s3.put_object(Bucket="img2img-test", Key="outputs/cat.abc.png.json",
                  Body=json.dumps({"status": "done"}).encode())
    listed = _run(LIST_SCRIPT, moto_env)
    assert listed.returncode == 0, listed.stderr
    assert "done     s3://img2img-test/outputs/cat.abc.png.json" in listed.stdout
    assert "1 result records, 1 images" in listed.stdout
