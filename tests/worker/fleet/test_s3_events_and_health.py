"""S3 event notifications, ECS task protection and the health check, end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from local_fleet.embedded_aws import enable_upload_notifications
from tests.support.agent_stand_in import AgentStandIn
from tests.support.fleet import (
    WORKER_BIN,
    WorkerProcess,
    put_job,
    queue_counts,
    worker_env,
)
from tests.support.images import solid_png

pytestmark = pytest.mark.timeout(300)


def test_s3_upload_notifications_produce_results_without_a_producer(fleet, s3, sqs,
                                                                    model_cache, tmp_path):
    enable_upload_notifications(s3, sqs, fleet, prefix="uploads/")
    s3.put_object(Bucket=fleet.bucket, Key="uploads/cat photo.png", Body=solid_png((120, 80)))
    s3.put_object(Bucket=fleet.bucket, Key="uploads/readme.txt", Body=b"not an image")
    env = worker_env(fleet, model_cache, tmp_path, default_models="tiny", event_steps=4,
                     event_strength=0.5, event_max_side=128)
    worker = WorkerProcess(env, "--exit-when-idle", "3")
    assert worker.wait() == 0, "\n".join(worker.lines[-20:])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=fleet.bucket,
                                                 Prefix="outputs/")["Contents"]]
    outputs = [k for k in keys if k.endswith(".png") and "/_batches/" not in k]
    assert len(outputs) == 1 and outputs[0].startswith("outputs/cat photo.")
    record = json.loads(s3.get_object(Bucket=fleet.bucket,
                                      Key=outputs[0] + ".json")["Body"].read())
    assert record["status"] == "done" and record["input"].endswith("uploads/cat photo.png")
    assert record["batch_id"] == "s3-events" and record["model"] == "tiny"
    # Our own outputs landing in the bucket did not trigger more work; queue is drained.
    assert "done 1, failed 0" in worker.summary()
    assert queue_counts(sqs, fleet.queue_url) == (0, 0)


def test_task_is_protected_while_busy_and_unprotected_when_idle(fleet, s3, sqs, model_cache,
                                                                tmp_path):
    agent = AgentStandIn()
    try:
        env = worker_env(fleet, model_cache, tmp_path)
        env["ECS_AGENT_URI"] = agent.uri
        worker = WorkerProcess(env, "--exit-when-idle", "3")
        worker.wait_for(lambda e: "starting" in e.get("message", ""), timeout=60)
        time.sleep(1.5)
        assert agent.bodies == [], "an idle worker must not protect its task"
        job = put_job(s3, sqs, fleet, "in/p.png", solid_png((96, 96)))
        assert worker.wait() == 0
    finally:
        agent.close()
    states = [body["ProtectionEnabled"] for body in agent.bodies]
    assert states == [True, False], agent.bodies
    assert agent.bodies[0]["ExpiresInMinutes"] > 0 and agent.other_paths == []
    done_log = next(e for e in worker.logs() if e.get("job_id") == job.job_id
                    and e.get("status") == "done")
    assert done_log  # the protected span covered the job
    assert queue_counts(sqs, fleet.queue_url) == (0, 0)


def _health_state(path, written: float, loops: dict[str, float], dead: dict | None = None):
    path.write_text(json.dumps({"time": written, "loops": loops, "dead": dead or {}}))


def test_healthcheck_reports_recent_progress_only(tmp_path):
    health = tmp_path / "w.health"
    env = dict(os.environ, IMG2IMG_HEALTH_FILE=str(health), IMG2IMG_HEALTH_MAX_AGE="30")

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([WORKER_BIN, "healthcheck"], env=env, capture_output=True,
                              text=True)

    missing = check()
    assert missing.returncode == 1 and "no progress" in missing.stdout
    now = time.time()
    _health_state(health, now, {"receiver": now, "engine": now - 5})
    fresh = check()
    assert fresh.returncode == 0 and "healthy" in fresh.stdout
    _health_state(health, now - 120, {"receiver": now - 120})
    stale = check()
    assert stale.returncode == 1 and "no progress for" in stale.stdout
    # One loop stalled while the others still write the file: unhealthy, and named.
    _health_state(health, now, {"receiver": now - 90, "engine": now})
    stalled = check()
    assert stalled.returncode == 1 and "the receiver loop made no progress" in stalled.stdout
    # A loop that died is unhealthy at once, with its reason.
    _health_state(health, now, {"engine": now}, {"receiver": "RecursionError: too deep"})
    dead = check()
    assert dead.returncode == 1 and "receiver loop died: RecursionError" in dead.stdout


def test_running_worker_keeps_its_health_file_fresh(fleet, model_cache, tmp_path):
    """Each loop beats often enough for the limit the worker is configured with."""
    env = worker_env(fleet, model_cache, tmp_path, health_max_age=2)
    worker = WorkerProcess(env, "--exit-when-idle", "4")
    worker.wait_for(lambda e: "starting" in e.get("message", ""), timeout=60)
    time.sleep(2.5)
    check = subprocess.run([WORKER_BIN, "healthcheck"], env=dict(env, IMG2IMG_HEALTH_MAX_AGE="2"),
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    assert worker.wait() == 0


def test_an_idle_exit_comes_on_time_and_leaves_the_worker_unhealthy(fleet, model_cache,
                                                                    tmp_path):
    """A 20 s long poll does not hold --exit-when-idle 2 back; the worker that exited
    is unhealthy at once (its last beats are still recent), and so is one killed."""
    env = worker_env(fleet, model_cache, tmp_path, receive_wait_seconds=20)
    worker = WorkerProcess(env, "--exit-when-idle", "2")
    worker.wait_for(lambda e: "starting" in e.get("message", ""), timeout=60)
    started = time.monotonic()
    assert worker.wait(timeout=60) == 0
    idle_exit = time.monotonic() - started
    check = subprocess.run([WORKER_BIN, "healthcheck"], env=env, capture_output=True,
                           text=True)
    killed_env = worker_env(fleet, model_cache, tmp_path / "k")
    killed = WorkerProcess(killed_env, "--exit-when-idle", "60")
    killed.wait_for(lambda e: "starting" in e.get("message", ""), timeout=60)
    killed.signal(signal.SIGKILL)
    killed.wait()
    after_kill = subprocess.run([WORKER_BIN, "healthcheck"], env=killed_env,
                                capture_output=True, text=True)

    assert idle_exit < 10, f"took {idle_exit:.1f} s"
    assert check.returncode == 1, check.stdout
    assert "unhealthy: the worker stopped: exited" in check.stdout
    assert after_kill.returncode == 1, after_kill.stdout
    assert "is not running" in after_kill.stdout


def test_serve_without_a_queue_url_fails_naming_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "IMG2IMG_QUEUE_URL"}
    result = subprocess.run([WORKER_BIN, "serve"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "IMG2IMG_QUEUE_URL" in result.stderr
    assert "--queue-url" in result.stderr


def test_serve_on_a_queue_that_does_not_exist_stops_with_a_clear_error(fleet, model_cache,
                                                                        tmp_path):
    """The queue named by --queue-url, and the endpoint by --endpoint-url."""
    env = worker_env(fleet, model_cache, tmp_path)
    del env["IMG2IMG_QUEUE_URL"], env["AWS_ENDPOINT_URL"]
    result = subprocess.run([WORKER_BIN, "--endpoint-url", fleet.endpoint_url, "serve",
                             "--queue-url", fleet.queue_url + "-missing"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "cannot receive from" in result.stderr and "-missing" in result.stderr


def test_serve_without_an_aws_region_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE")}
    # An emulator's queue URL names no region (an AWS one does: it would be used).
    env.update(IMG2IMG_QUEUE_URL="http://127.0.0.1:9/123456789012/q",
               AWS_CONFIG_FILE=str(tmp_path / "no-config"))
    result = subprocess.run([WORKER_BIN, "serve"], env=env, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 2 and "no AWS region" in result.stderr
    assert "Traceback" not in result.stderr
