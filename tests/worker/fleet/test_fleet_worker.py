"""The fleet worker against a real moto server over HTTP, as a real subprocess."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.support.fleet import (
    FaultProxy,
    WorkerProcess,
    put_job,
    queue_counts,
    record_of,
    worker_env,
)
from tests.support.images import solid_png

pytestmark = pytest.mark.timeout(300)


def _bomb_png() -> bytes:
    """A small file that decodes to 7000x7000 pixels (49 M, over the 40 M limit)."""
    buffer = io.BytesIO()
    Image.new("L", (7000, 7000), 0).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg_rotated() -> bytes:
    image = Image.new("RGB", (160, 96), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def test_good_and_bad_inputs_each_get_exactly_one_outcome(fleet, s3, sqs, model_cache,
                                                          tmp_path):
    good = {
        "in/odd.png": solid_png((333, 517)),
        "in/rgba.png": solid_png((200, 120), "RGBA", (0, 0, 255, 100)),
        "in/gray.png": solid_png((90, 150), "L"),
        "in/rotated.jpg": _jpeg_rotated(),
    }
    good_jobs = [put_job(s3, sqs, fleet, key, data) for key, data in good.items()]
    bad_jobs = {
        "InvalidImage:corrupt": put_job(s3, sqs, fleet, "in/corrupt.png", b"\x89PNG garbage"),
        "InvalidImage:empty": put_job(s3, sqs, fleet, "in/zero.png", b""),
        "ImageTooLarge": put_job(s3, sqs, fleet, "in/bomb.png", _bomb_png()),
        "LocationNotAllowed": put_job(s3, sqs, fleet, "elsewhere/x.png", solid_png((64, 64))),
        "ModelNotAllowed": put_job(s3, sqs, fleet, "in/m.png", solid_png((64, 64)),
                                   model="not-allowed/model"),
        "InputNotFound": put_job(s3, sqs, fleet, "in/missing.png", None),
    }
    # A job whose fields are invalid but which names its output: a failed record.
    invalid = json.loads(good_jobs[0].to_json())
    invalid.update(job_id="invalidjob0001", strength=7)
    invalid["output"]["key"] = "out/invalid.invalidjob00.png"
    sqs.send_message(QueueUrl=fleet.queue_url, MessageBody=json.dumps(invalid))
    # Not a job at all: released at once, redriven to the DLQ, never processed.
    sqs.send_message(QueueUrl=fleet.queue_url, MessageBody="this is not a job")

    env = worker_env(fleet, model_cache, tmp_path, max_batch_size=4,
                     allowed_inputs=f"s3://{fleet.bucket}/in/",
                     allowed_outputs=f"s3://{fleet.bucket}/out/")
    worker = WorkerProcess(env, "--exit-when-idle", "3")
    assert worker.wait() == 0, "\n".join(worker.lines[-30:])

    for job in good_jobs:
        record = record_of(s3, job)
        assert record is not None and record["status"] == "done", record
        assert record["output"] == job.output.uri and record["error"] is None
        assert record["seed"] == job.effective_seed(job.job_id)
        assert record["worker"] and record["batch_id"] == "b1"
        out = Image.open(io.BytesIO(s3.get_object(Bucket=fleet.bucket,
                                                  Key=job.output.key)["Body"].read()))
        source = Image.open(io.BytesIO(good[job.input.key]))
        expected = source.size if job.input.key != "in/rotated.jpg" else source.size[::-1]
        assert out.size == expected
    for expected, job in bad_jobs.items():
        record = record_of(s3, job)
        assert record is not None, expected
        error_type, _, detail = expected.partition(":")
        assert record["status"] == "failed" and record["output"] is None
        assert record["error"]["type"] == error_type, record
        assert job.input.key in record["error"]["message"] or error_type in (
            "ModelNotAllowed",), record
    corrupt = record_of(s3, bad_jobs["InvalidImage:empty"])
    assert "empty" in corrupt["error"]["message"]
    invalid_record = json.loads(s3.get_object(Bucket=fleet.bucket,
                                              Key="out/invalid.invalidjob00.png.json")["Body"].read())
    assert invalid_record["status"] == "failed" and "strength" in invalid_record["error"][
        "message"]
    # Only done jobs have outputs.
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=fleet.bucket, Prefix="out/")["Contents"]}
    outputs = {k for k in keys if k.endswith((".png", ".jpg")) and "/_batches/" not in k}
    assert outputs == {job.output.key for job in good_jobs}
    # The poison body went to the DLQ through the redrive policy, and nothing is left.
    dlq = sqs.receive_message(QueueUrl=fleet.dlq_url, WaitTimeSeconds=1)["Messages"]
    assert [m["Body"] for m in dlq] == ["this is not a job"]
    assert queue_counts(sqs, fleet.queue_url) == (0, 0)
    assert "done 4, failed 7" in worker.summary()
    # Logs are JSON lines carrying the job id.
    assert any(e.get("job_id") == good_jobs[0].job_id for e in worker.logs())

    # Enqueuing the same jobs again rewrites no output: they are acknowledged as done.
    before = {j.job_id: s3.head_object(Bucket=fleet.bucket, Key=j.output.key)["LastModified"]
              for j in good_jobs}
    time.sleep(1.1)
    for job in good_jobs:
        sqs.send_message(QueueUrl=fleet.queue_url, MessageBody=job.to_json())
    again = WorkerProcess(env, "--exit-when-idle", "2")
    assert again.wait() == 0
    assert "done 0" in again.summary() and "already done 4" in again.summary()
    after = {j.job_id: s3.head_object(Bucket=fleet.bucket, Key=j.output.key)["LastModified"]
             for j in good_jobs}
    assert after == before
    assert queue_counts(sqs, fleet.queue_url) == (0, 0)


def test_sigkill_mid_batch_then_another_worker_finishes_everything_once(
        fleet, s3, sqs, model_cache, tmp_path):
    s3.put_bucket_versioning(Bucket=fleet.bucket,
                             VersioningConfiguration={"Status": "Enabled"})
    jobs = [put_job(s3, sqs, fleet, f"in/k{i}.png", solid_png((128, 128), color=i * 20),
                    steps=60, strength=1.0) for i in range(4)]
    env = worker_env(fleet, model_cache, tmp_path, max_batch_size=2, visibility_timeout=10)
    first = WorkerProcess(env)
    first.wait_for(lambda e: "loaded model" in e.get("message", ""), timeout=90)
    time.sleep(0.5)
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    # It ends once the four jobs are done (idle exit only as a safety net).
    second = WorkerProcess(env, "--max-jobs", "4", "--exit-when-idle", "30")
    assert second.wait(timeout=240) == 0, "\n".join(second.lines[-20:])
    for job in jobs:
        assert record_of(s3, job)["status"] == "done"
        versions = s3.list_object_versions(Bucket=fleet.bucket, Prefix=job.output.key)
        written = [v for v in versions.get("Versions", []) if v["Key"] == job.output.key]
        assert len(written) == 1, f"{job.output.key} written {len(written)} times"
    assert queue_counts(sqs, fleet.queue_url) == (0, 0)


def test_sigterm_releases_unstarted_at_once_and_exits_zero(fleet, s3, sqs, model_cache,
                                                            tmp_path):
    jobs = [put_job(s3, sqs, fleet, f"in/t{i}.png", solid_png((128, 128), color=i),
                    steps=40, strength=1.0) for i in range(8)]
    env = worker_env(fleet, model_cache, tmp_path, max_batch_size=2, prefetch_batches=3,
                     visibility_timeout=60, stop_deadline=20)
    worker = WorkerProcess(env)
    worker.wait_for(lambda e: "loaded model" in e.get("message", ""), timeout=90)
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    assert time.monotonic() - signalled < 20 + 5
    # Nothing stays invisible: released messages are visible at once, not after 60 s.
    visible, in_flight = queue_counts(sqs, fleet.queue_url)
    done = sum(1 for j in jobs if (record_of(s3, j) or {}).get("status") == "done")
    assert in_flight == 0
    assert visible == len(jobs) - done
    assert visible > 0, "the worker should not have finished everything before SIGTERM"
    assert "released" in worker.summary()


def test_job_longer_than_visibility_timeout_is_not_delivered_twice(fleet, s3, sqs,
                                                                   model_cache, tmp_path):
    """The input download takes 14 s (a slow proxy), longer than the 10 s visibility
    timeout: only the heartbeat keeps the message from being delivered again."""
    job = put_job(s3, sqs, fleet, "in/slow.png", solid_png((96, 96)))

    def delay(method: str, path: str) -> float:
        return 14.0 if method == "GET" and path.endswith("/in/slow.png") else 0.0

    with FaultProxy(fleet.endpoint_url, delay=delay) as proxy:
        env = worker_env(fleet, model_cache, tmp_path, visibility_timeout=10)
        env["AWS_ENDPOINT_URL"] = proxy.url
        worker = WorkerProcess(env, "--exit-when-idle", "3")
        assert worker.wait(timeout=120) == 0
    record = record_of(s3, job)
    assert record["status"] == "done"
    assert record["seconds"] > 10, "the job must outlast the visibility timeout"
    assert proxy.seen[("GET", f"/{fleet.bucket}/in/slow.png")] == 1, "delivered twice"
    assert "done 1," in worker.summary() and "already done 0" in worker.summary()
    assert queue_counts(sqs, fleet.queue_url) == (0, 0)


def test_injected_s3_throttling_and_500s_are_retried_and_nothing_is_lost(
        fleet, s3, sqs, model_cache, tmp_path):
    jobs = [put_job(s3, sqs, fleet, f"in/f{i}.png", solid_png((96, 96), color=i * 30))
            for i in range(4)]

    def fault(method: str, path: str, count: int):
        if path == "/" or path.endswith(".done"):
            return None  # SQS, and the markers: leave them alone
        if count == 0:
            return (503, "SlowDown") if method == "GET" else (500, "InternalError")
        return None

    with FaultProxy(fleet.endpoint_url, fault) as proxy:
        env = worker_env(fleet, model_cache, tmp_path, max_batch_size=4)
        env["AWS_ENDPOINT_URL"] = proxy.url
        worker = WorkerProcess(env, "--exit-when-idle", "3")
        assert worker.wait() == 0, "\n".join(worker.lines[-20:])
    assert len(proxy.injected) >= 8  # every first GET and first PUT of each job failed
    for job in jobs:
        assert record_of(s3, job)["status"] == "done"
    assert "done 4, failed 0" in worker.summary()
    assert queue_counts(sqs, fleet.queue_url) == (0, 0)


def test_message_that_keeps_failing_ends_in_dlq_and_redrive_brings_it_back(
        fleet, s3, sqs, model_cache, tmp_path):
    job = put_job(s3, sqs, fleet, "in/always-500.png", solid_png((64, 64)))

    def fault(method: str, path: str, count: int):
        return (500, "InternalError") if "always-500" in path else None

    with FaultProxy(fleet.endpoint_url, fault) as proxy:
        env = worker_env(fleet, model_cache, tmp_path)
        env["AWS_ENDPOINT_URL"] = proxy.url
        worker = WorkerProcess(env, "--exit-when-idle", "3")
        assert worker.wait() == 0
    assert record_of(s3, job) is None, "a transient failure must not write a failed record"
    assert queue_counts(sqs, fleet.queue_url) == (0, 0)
    assert queue_counts(sqs, fleet.dlq_url)[0] == 1
    assert "released 2" in worker.summary()
    # The operator fixes the cause and redrives: the job is back on the main queue.
    producer = str(Path(sys.executable).with_name("img2img-producer"))
    moved = subprocess.run([producer, "redrive"], env=worker_env(fleet, model_cache, tmp_path),
                           capture_output=True, text=True, timeout=120)
    assert moved.returncode == 0, moved.stderr
    assert queue_counts(sqs, fleet.dlq_url) == (0, 0)
    (back,) = sqs.receive_message(QueueUrl=fleet.queue_url, WaitTimeSeconds=2)["Messages"]
    assert json.loads(back["Body"])["job_id"] == job.job_id
