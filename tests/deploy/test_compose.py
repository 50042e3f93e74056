"""docker-compose.yml: the local fleet's structure, wiring and helper scripts.

The compose file is parsed as YAML; `docker compose config` also runs when a compose CLI
is installed. The setup and results scripts run against an in-process moto. The fleet
itself runs on a Docker engine in `make test-image` (tests/image/).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO as ROOT

yaml = pytest.importorskip("yaml")

COMPOSE = ROOT / "docker-compose.yml"
MAKEFILE = ROOT / "Makefile"
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
    assert set(services) == {"aws", "init", "worker", "worker-gpu", "producer", "results"}


def test_emulator_is_built_here_and_healthchecked(services: dict[str, Any]) -> None:
    """No registry image: the emulator is the Dockerfile's `emulator` target, whose
    HEALTHCHECK `init` waits for."""
    aws = services["aws"]
    assert aws["build"]["target"] == "emulator"
    assert aws["image"] == "img2img-fleet-emulator:local"
    dockerfile = (ROOT / "Dockerfile").read_text()
    emulator = dockerfile[dockerfile.index(" AS emulator"):dockerfile.index(" AS runtime")]
    assert "\nHEALTHCHECK " in emulator and "EXPOSE 5000" in emulator
    assert aws["ports"] == ["127.0.0.1:${IMG2IMG_EMULATOR_PORT:-5000}:5000"]


def test_dependency_order(services: dict[str, Any]) -> None:
    assert _depends(services["init"]) == {"aws": "service_healthy"}
    for name in ("worker", "worker-gpu", "producer"):
        assert _depends(services[name]) == {"init": "service_completed_successfully"}, name
    assert _depends(services["results"]) == {"producer": "service_completed_successfully"}
    for name in ("init", "producer", "results"):
        assert services[name]["restart"] == "no", name


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
    assert all("build" in s for s in services.values()), "every image is built here"
    images = {name: s["image"] for name, s in services.items()}
    assert images == {"aws": "img2img-fleet-emulator:local",
                      "worker-gpu": "img2img-fleet-worker:local-cuda",
                      **{n: "img2img-fleet-worker:local"
                         for n in ("init", "worker", "producer", "results")}}
    for service in services.values():
        assert (ROOT / service["build"]["context"] / "Dockerfile").is_file()
    # The GPU worker is the Dockerfile's default (CUDA) build; the others its CPU build.
    assert "args" not in services["worker-gpu"]["build"]
    assert services["worker"]["build"]["args"]["XFORMERS_VERSION"] == ""
    assert "models" in (yaml.safe_load(COMPOSE.read_text()).get("volumes") or {})


def _make_variable(name: str) -> str:
    match = re.search(rf"^{name} \?= (.*)$", MAKEFILE.read_text(), re.MULTILINE)
    assert match, name
    return match.group(1).strip()


def test_compose_cpu_build_is_the_make_image_build(services: dict[str, Any]) -> None:
    """`make image` and `docker compose up --build` must build the same image (one cache,
    one tested image): the compose CPU build arguments are the Makefile's."""
    args = services["worker"]["build"]["args"]
    assert args["PYTHON"] == _make_variable("IMAGE_PYTHON")
    assert args["TORCH_VERSION"] == _make_variable("TORCH_CPU_VERSION")
    index = _make_variable("TORCH_CPU_INDEX")
    assert args["TORCH_INDEX_URL"] == "${IMG2IMG_TORCH_INDEX_URL-" + index + "}"
    assert args["BUILD_IMAGE"] == args["CUDA_IMAGE"] == \
        "${IMG2IMG_BASE_IMAGE:-debian:bookworm-slim}"
    make_args = re.search(r"^CPU_BUILD_ARGS = (.*?)\n\S", MAKEFILE.read_text(),
                          re.MULTILINE | re.DOTALL)
    assert make_args
    for name in args:
        assert f"--build-arg {name}=" in make_args.group(1), name
    assert services["aws"]["build"]["args"] == args, "the emulator shares the python stage"
    assert _make_variable("IMAGE") == services["worker"]["image"]
    assert _make_variable("EMULATOR_IMAGE") == services["aws"]["image"]


def test_workers_run_read_only_like_on_ecs(services: dict[str, Any]) -> None:
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        assert worker["read_only"] is True, name
        assert worker["tmpfs"] == ["/tmp"], name
        assert worker["healthcheck"]["interval"], name  # the image's check, polled sooner
        assert "test" not in worker["healthcheck"], "the check itself comes from the image"


def test_results_copies_the_outputs_to_the_host(services: dict[str, Any]) -> None:
    results = services["results"]
    assert results["entrypoint"] == ["python", "/compose/list_outputs.py"]
    assert results["command"] == ["--wait", "--download", "/outputs"]
    assert "${IMG2IMG_OUTPUT_DIR:-./data/output_images}:/outputs" in results["volumes"]
    assert results["environment"]["FLEET_DOWNLOAD_LABEL"] == \
        "${IMG2IMG_OUTPUT_DIR:-./data/output_images}"
    producer_command = services["producer"]["command"]
    assert results["environment"]["FLEET_OUTPUT_PREFIX"] == \
        _arg(producer_command, "--output").split("/", 3)[3]


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
    assert {"aws", "init", "worker", "producer", "results"} <= listed
    assert listed <= {"aws", "init", "worker", "producer", "results", "worker-gpu"}
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


def _run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
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


def _batch(s3: Any, batch_id: str, total: int, markers: dict[str, str]) -> None:
    """A batch as the producer and the workers leave it: manifest, outputs, records, markers."""
    prefix = f"outputs/_batches/{batch_id}/"
    s3.put_object(Bucket="img2img-test", Key=prefix + "manifest.json",
                  Body=json.dumps({"batch_id": batch_id, "total": total}).encode())
    for job, status in markers.items():
        s3.put_object(Bucket="img2img-test", Key=f"{prefix}{job}.{status}", Body=b"")
        s3.put_object(Bucket="img2img-test", Key=f"outputs/sub/{job}.png", Body=b"png")
        s3.put_object(Bucket="img2img-test", Key=f"outputs/sub/{job}.png.json",
                      Body=json.dumps({"status": status}).encode())


def test_list_outputs_waits_for_batches_and_downloads(moto_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    import boto3

    assert _run(INIT_SCRIPT, moto_env).returncode == 0
    s3 = boto3.client("s3", endpoint_url=moto_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="local", aws_secret_access_key="local")
    s3.create_bucket(Bucket="img2img-test")
    for obj in s3.list_objects_v2(Bucket="img2img-test").get("Contents", []):
        s3.delete_object(Bucket="img2img-test", Key=obj["Key"])
    _batch(s3, "b-1", 2, {"j1": "done"})
    env = {**moto_env, "FLEET_DOWNLOAD_LABEL": "./data/output_images"}
    # One job of two is still open: the wait runs out and nothing is copied.
    unfinished = _run(LIST_SCRIPT, {**env, "FLEET_WAIT_SECONDS": "0"}, "--wait", "--download",
                      str(tmp_path))
    assert unfinished.returncode == 1
    assert "batch b-1: 1/2 finished (1 done, 0 failed)" in unfinished.stdout
    assert "gave up waiting" in unfinished.stdout and not list(tmp_path.iterdir())

    _batch(s3, "b-1", 2, {"j1": "done", "j2": "failed"})
    finished = _run(LIST_SCRIPT, {**env, "FLEET_WAIT_SECONDS": "30"}, "--wait", "--download",
                    str(tmp_path))
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert "batch b-1: 2/2 finished (1 done, 1 failed)" in lines
    assert "2 result records, 2 images under s3://img2img-test/outputs/" in lines
    assert "1 done, 1 failed: outputs and result records are in ./data/output_images" in lines
    copied = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    # The batch bookkeeping (_batches/) stays in S3; outputs keep their folders.
    assert copied == ["sub/j1.png", "sub/j1.png.json", "sub/j2.png", "sub/j2.png.json"]
    assert (tmp_path / "sub" / "j1.png").read_bytes() == b"png"


def test_local_docs_name_only_real_services_and_options(services: dict[str, Any]) -> None:
    """docs/deploy.md's local section: every compose command names a service and every
    IMG2IMG_* knob it mentions is one the compose file reads."""
    doc = (ROOT / "docs" / "deploy.md").read_text()
    local = doc[doc.index("## 0. Try it on one machine"):doc.index("## 1. Prerequisites")]
    runs = re.findall(r"docker compose run --rm (?:--no-deps )?(\S+)", local)
    assert runs and set(runs) <= set(services), runs
    knobs = set(re.findall(r"IMG2IMG_[A-Z_]+", local))
    assert knobs and all("${" + k in COMPOSE.read_text() for k in knobs), knobs
