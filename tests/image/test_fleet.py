"""The worker image, run for real: docker-compose.yml's fleet on a Docker engine.

`make test-image` builds the images (`make image`) and runs this module. The fleet is the
compose file users run, with tests/image/compose.test.yml on top (small jobs, a short stop
deadline), under its own project name, emulator port and output folder:

- the sample images go S3 -> SQS -> worker container -> S3, and `results` copies them out;
- the worker reaches `healthy` and runs as UID 10001 on a read-only root filesystem;
- `docker stop` in the middle of a job: the worker exits 0 well inside its stop timeout,
  and the job ends exactly once, on another worker (S3 object versions, result record,
  the workers' JSON logs);
- start-to-first-result of a fresh worker container with `tiny` is measured and printed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import boto3
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROJECT = "img2img-image-test"
BUCKET = "img2img-local"
AWS_ENV = {"AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "local",
           "AWS_SECRET_ACCESS_KEY": "local"}
SAMPLES = sorted(p for p in (ROOT / "data" / "input_images").iterdir()
                 if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
# A job that takes tens of seconds with `tiny` on a CPU: long enough to stop a worker in it.
SLOW_JOB = ["--max-side", "1024", "--steps", "200", "--strength", "1.0"]
STOP_TIMEOUT = 120  # stop_grace_period of the compose worker (what ECS calls stopTimeout)
STOP_DEADLINE = 5  # IMG2IMG_STOP_DEADLINE in compose.test.yml
FLEET_TIMEOUT = 600


def _docker() -> str:
    return os.environ.get("DOCKER") or shutil.which("docker") or "docker"


def _compose_cli() -> list[str]:
    docker = _docker()
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        pytest.fail("no compose CLI: install the docker compose plugin or docker-compose")
    return [legacy]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 300,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                            cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@dataclass
class Fleet:
    compose: list[str]
    env: dict[str, str]
    endpoint: str  # the emulator, from this host
    output_dir: Path
    s3: object
    sqs: object
    started: float  # time.time() when `up` was called
    up_seconds: float  # `up` to `results` exiting

    def run(self, *args: str, timeout: float = 300, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        return _run([*self.compose, *args], env=self.env, timeout=timeout, check=check)

    def container_ids(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).stdout.split()

    def logs(self, container: str) -> str:
        result = _run([_docker(), "logs", container], check=False)
        return result.stdout + result.stderr

    def inspect(self, container: str) -> dict:
        return json.loads(_run([_docker(), "inspect", container]).stdout)[0]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
          ) -> Iterator[Fleet]:
    output_dir = tmp_path_factory.mktemp("outputs")
    port = _free_port()
    env = {**os.environ, "IMG2IMG_OUTPUT_DIR": str(output_dir),
           "IMG2IMG_EMULATOR_PORT": str(port), "IMG2IMG_TORCH_INDEX_URL": "",
           "COMPOSE_PROJECT_NAME": PROJECT,
           # Creating and removing containers is slow on some storage drivers (vfs).
           "COMPOSE_HTTP_TIMEOUT": "300"}
    compose = [*_compose_cli(), "-f", str(ROOT / "docker-compose.yml"),
               "-f", str(HERE / "compose.test.yml")]
    endpoint = f"http://127.0.0.1:{port}"
    clients = {name: boto3.client(name, endpoint_url=endpoint, region_name=AWS_ENV["AWS_REGION"],
                                  aws_access_key_id="local", aws_secret_access_key="local")
               for name in ("s3", "sqs")}
    _run([*compose, "down", "-v", "-t", "1"], env=env, check=False)
    started = time.time()
    fleet = Fleet(compose, env, endpoint, output_dir, clients["s3"], clients["sqs"], started, 0.0)
    try:
        # Images come from `make image`: the compose fleet must not rebuild them here.
        fleet.run("up", "-d", "--no-build", timeout=FLEET_TIMEOUT)
        (results,) = fleet.container_ids("results")
        code = _run([_docker(), "wait", results], timeout=FLEET_TIMEOUT).stdout.strip()
        fleet.up_seconds = time.time() - started
        assert code == "0", f"results exited {code}:\n{fleet.logs(results)}"
        yield fleet
    finally:
        if request.session.testsfailed:
            print(fleet.run("logs", "--no-color", "--tail", "60", check=False).stdout)
        fleet.run("down", "-v", "-t", "5", check=False)


def _records(output_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(output_dir.rglob("*.json"))]


def _hostname(fleet: Fleet, container: str) -> str:
    return fleet.inspect(container)["Config"]["Hostname"]


def test_sample_images_go_through_the_fleet(fleet: Fleet) -> None:
    (results,) = fleet.container_ids("results")
    lines = fleet.logs(results).strip().splitlines()
    assert f"{len(SAMPLES)} done, 0 failed: outputs and result records are in " \
           f"{fleet.output_dir}" in lines, lines[-5:]
    records = _records(fleet.output_dir)
    assert len(records) == len(SAMPLES)
    assert {r["status"] for r in records} == {"done"}
    assert {r["input"].rsplit("/", 1)[1] for r in records} == {p.name for p in SAMPLES}
    (worker,) = fleet.container_ids("worker")
    assert {r["worker"].rsplit("-", 1)[0] for r in records} == {_hostname(fleet, worker)}
    for record in records:
        output = fleet.output_dir / record["output"].split("/outputs/", 1)[1]
        source = ROOT / "data" / "input_images" / record["input"].rsplit("/", 1)[1]
        with Image.open(output) as out, Image.open(source) as src:
            assert out.size == src.size, record  # resized back to the input's size
        # Files written into the host folder belong to its owner.
        assert output.stat().st_uid == fleet.output_dir.stat().st_uid


def test_worker_reaches_healthy(fleet: Fleet) -> None:
    (worker,) = fleet.container_ids("worker")
    deadline = time.monotonic() + 120
    while (state := fleet.inspect(worker)["State"]["Health"])["Status"] != "healthy":
        assert time.monotonic() < deadline, state
        time.sleep(2)
    assert state["Log"][-1]["ExitCode"] == 0
    assert state["Log"][-1]["Output"].startswith("healthy:")


def test_worker_runs_non_root_on_a_read_only_root(fleet: Fleet) -> None:
    (worker,) = fleet.container_ids("worker")
    info = fleet.inspect(worker)
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert "/tmp" in info["HostConfig"]["Tmpfs"]
    assert {m["Destination"]: m["Type"] for m in info["Mounts"]}["/models"] == "volume"
    exec_ = [_docker(), "exec", worker, "sh", "-c"]
    assert _run([*exec_, "id -u"]).stdout.strip() == "10001"
    denied = _run([*exec_, "touch /home/worker/x"], check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    # It worked all the same: the tiny model was built into the volume, health in /tmp.
    listing = _run([*exec_, "ls /models/img2img /tmp"]).stdout
    assert "tiny-sd-" in listing and "img2img-worker.health" in listing


def test_start_to_first_result(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    """From the worker container's start (fresh /models volume: tiny is built first) to the
    first result record, with the small jobs of compose.test.yml."""
    (worker,) = fleet.container_ids("worker")
    started = datetime.fromisoformat(
        fleet.inspect(worker)["State"]["StartedAt"][:26].rstrip("Z") + "+00:00")
    first = min(datetime.fromisoformat(r["finished_at"].replace("Z", "+00:00"))
                for r in _records(fleet.output_dir))
    seconds = (first - started).total_seconds()
    with capsys.disabled():
        print(f"\n[image] compose up to all {len(SAMPLES)} results copied out: "
              f"{fleet.up_seconds:.1f} s; worker container start to first result: "
              f"{seconds:.1f} s")
    assert 0 < seconds < 300


def _wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(interval)
    return value


def _job_log(logs: str, job_id: str) -> list[dict]:
    """The worker's JSON log records about one job."""
    records = []
    for line in logs.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the summary line on stderr
        if isinstance(record, dict) and record.get("job_id") == job_id:
            records.append(record)
    return records


def _in_flight(fleet: Fleet) -> int:
    url = fleet.sqs.get_queue_url(QueueName="img2img-jobs")["QueueUrl"]  # type: ignore[attr-defined]
    attrs = fleet.sqs.get_queue_attributes(  # type: ignore[attr-defined]
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_stop_mid_job_hands_the_job_to_another_worker(fleet: Fleet, capsys) -> None:
    s3 = fleet.s3
    # Every write from here on keeps its versions: a second write of the same key shows.
    s3.put_bucket_versioning(  # type: ignore[attr-defined]
        Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    landscape = ROOT / "data" / "input_images" / "landscape.jpg"
    s3.upload_file(str(landscape), BUCKET, "inputs/slow/landscape.jpg")  # type: ignore[attr-defined]
    (first,) = fleet.container_ids("worker")
    first_host = _hostname(fleet, first)

    # Enqueued from here with the project's producer (the fleet's own producer container did
    # its part above; another container would cost a root filesystem copy on slow drivers).
    producer = str(Path(sys.executable).with_name("img2img-producer"))
    enqueued = _run([producer, "enqueue", f"s3://{BUCKET}/inputs/slow/", "--output",
                     f"s3://{BUCKET}/outputs/slow/", "--model", "tiny", *SLOW_JOB,
                     "--queue-url", f"{fleet.endpoint}/123456789012/img2img-jobs"],
                    env={**os.environ, **AWS_ENV, "AWS_ENDPOINT_URL": fleet.endpoint})
    assert "enqueued 1," in enqueued.stdout, enqueued.stdout
    _wait_for(lambda: _in_flight(fleet) == 1, 60, "the worker to take the job")
    time.sleep(2)  # receipt to the engine takes well under a second (the model is warm)

    stopping = time.monotonic()
    _run([_docker(), "stop", first], timeout=STOP_TIMEOUT + 30)  # the container's own timeout
    stop_seconds = time.monotonic() - stopping
    state = fleet.inspect(first)["State"]
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert stop_seconds < STOP_DEADLINE + 30 < STOP_TIMEOUT, stop_seconds
    # In the middle of the job: with nothing running a worker exits at once; with a batch
    # that cannot finish before the stop deadline it works until the deadline, then
    # stops the batch between steps and releases it (the job is named in its logs, done
    # nowhere).
    first_logs = fleet.logs(first)
    assert stop_seconds >= STOP_DEADLINE, (stop_seconds, first_logs[-3000:])
    # Another worker takes the released job over. (The stopped one is removed first, else
    # `up` would start it again.)
    _run([_docker(), "rm", first])
    fleet.run("up", "-d", "--no-build", "--no-deps", "worker")
    (second,) = fleet.container_ids("worker")
    assert second != first

    def final_record() -> tuple[str, dict] | None:
        listing = s3.list_objects_v2(Bucket=BUCKET, Prefix="outputs/slow/")  # type: ignore[attr-defined]
        keys = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".png.json")]
        if not keys:
            return None
        record = json.loads(s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read())  # type: ignore[attr-defined]
        return (keys[0], record) if record["status"] in ("done", "failed") else None

    key, record = _wait_for(final_record, 600, "the job's final result record", interval=2)
    assert record["status"] == "done", record
    second_host = _hostname(fleet, second)
    assert record["worker"].rsplit("-", 1)[0] == second_host != first_host

    # Exactly once: one version of the output and of the batch's done marker, no failed
    # marker; the record's versions (a worker's running claim, then the outcome) hold
    # the first worker's claim and one outcome, done by the second worker.
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix="outputs/slow/")  # type: ignore[attr-defined]
    counts: dict[str, int] = {}
    for version in versions.get("Versions", []):
        counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    output_key = key[: -len(".json")]
    marker = [k for k in counts if k.endswith(f"{record['job_id']}.done")]
    assert counts[output_key] == 1 and len(marker) == 1 and counts[marker[0]] == 1, counts
    assert not [k for k in counts if k.endswith(".failed")], counts
    history = []
    for version in versions["Versions"]:
        if version["Key"] == key:
            body = s3.get_object(Bucket=BUCKET, Key=key, VersionId=version["VersionId"])  # type: ignore[attr-defined]
            old = json.loads(body["Body"].read())
            history.append((old["status"], old["worker"].rsplit("-", 1)[0]))
    assert ("running", first_host) in history, history
    assert [h for h in history if h[0] != "running"] == [("done", second_host)], history
    first_lines = _job_log(first_logs, record["job_id"])
    assert first_lines and not [r for r in first_lines if r.get("status") == "done"], \
        first_lines
    second_done = [r for r in _job_log(fleet.logs(second), record["job_id"])
                   if r.get("status") == "done"]
    assert len(second_done) == 1, second_done
    with capsys.disabled():
        print(f"\n[image] docker stop mid-job: exit 0 after {stop_seconds:.1f} s "
              f"(deadline {STOP_DEADLINE} s, stop timeout {STOP_TIMEOUT} s); the job ended "
              f"once, on the other worker")
