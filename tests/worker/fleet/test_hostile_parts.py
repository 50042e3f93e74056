"""Hostile input, part by part: network errors while reading a body, paths that would
escape their root, memory for many large images, a worker loop that dies, an enqueue
whose source holds an object that cannot be a job."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import (
    ClientError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from typer.testing import CliRunner
from urllib3.exceptions import ProtocolError

from common.aws_errors import is_transient
from contract.errors import ModelNotAllowed, ModelNotFound
from contract.job import parse_job
from producer.cli import app
from tests.support.fleet import upload_tiny_model
from worker.engine.engine import Engine
from worker.engine.model_refs import check_allowed
from worker.engine.s3_models import s3_model_dir, sync_s3_model
from worker.fleet.service import Worker
from worker.fleet.sqs_queue import SqsQueue
from worker.fleet.storage import S3Storage
from worker.health import check_health
from worker.images import PixelBudget, decode_and_prepare
from worker.settings import WorkerSettings


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize("exc", [
    ResponseStreamingError(error=ProtocolError("Connection broken: IncompleteRead")),
    IncompleteReadError(actual_bytes=10, expected_bytes=20),
    ReadTimeoutError(endpoint_url="http://s3"),
    ProtocolError("Connection aborted"),
    ConnectionResetError(104, "reset"),
    _client_error("SlowDown", 503),
    _client_error("InternalError", 500),
])
def test_every_network_error_while_reading_is_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [_client_error("NoSuchKey", 404),
                                 _client_error("AccessDenied", 403), ValueError("bad")])
def test_the_requests_own_faults_are_not_transient(exc):
    assert not is_transient(exc)


# -- paths --------------------------------------------------------------------------------

@pytest.mark.parametrize("reference", [
    "s3://models/../../../escape/", "s3://models/a/./b/", "/models/../etc/passwd",
    "models/../../x"])
def test_model_references_with_dot_segments_are_refused(reference):
    with pytest.raises(ModelNotAllowed, match="'..'"):
        check_allowed(reference, ["s3://models/*", "/models/*", "models/*"])


def test_s3_model_folder_stays_inside_the_cache(tmp_path):
    assert s3_model_dir("s3://models/sd/v1/", tmp_path).is_relative_to(tmp_path)
    for bad in ("s3://models/../../../escape/", "s3://models/a//b/"):
        with pytest.raises(ModelNotFound, match="segments"):
            s3_model_dir(bad, tmp_path)


def test_s3_model_sync_writes_only_model_files_inside_the_model(fleet, s3, model_cache,
                                                                 tmp_path):
    upload_tiny_model(s3, fleet.bucket, model_cache)
    s3.put_object(Bucket=fleet.bucket, Key="models/tiny/../../../escape.json", Body=b"{}")
    s3.put_object(Bucket=fleet.bucket, Key="models/tiny/pipeline.py", Body=b"import os")
    s3.put_object(Bucket=fleet.bucket, Key="models/tiny/unet/weights.ckpt", Body=b"pickle")
    cache = tmp_path / "cache"
    folder = sync_s3_model(f"s3://{fleet.bucket}/models/tiny/", cache, s3)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert all(w.startswith("cache/s3/") for w in written), written
    assert not (folder / "pipeline.py").exists() and not (folder / "unet/weights.ckpt").exists()
    assert not list(tmp_path.rglob("escape*"))


# -- memory ------------------------------------------------------------------------------

def test_pixel_budget_bounds_concurrent_decodes():
    budget = PixelBudget(100)
    inside = []
    lock = threading.Lock()
    current = [0]

    def decode(pixels: int) -> None:
        with budget.reserve(pixels):
            with lock:
                current[0] += pixels
                inside.append(current[0])
            time.sleep(0.02)
            with lock:
                current[0] -= pixels

    threads = [threading.Thread(target=decode, args=(40,)) for _ in range(12)]
    threads.append(threading.Thread(target=decode, args=(250,)))  # alone, over budget
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(inside) <= 250 and all(v <= 100 for v in inside if v != 250)
    assert budget.peak <= 250


def test_large_photos_decode_under_the_budget():
    from tests.support.images import jpeg_bytes, pattern_rgb

    data = jpeg_bytes(pattern_rgb(1600, 1200))
    budget = PixelBudget(2_000_000)  # room for one 1.9 MP photo at a time
    results = []

    def run() -> None:
        results.append(decode_and_prepare(data, max_pixels=10**8, max_side=256,
                                          size_bucket=64, budget=budget))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and all(r.size == (256, 192) for r in results)
    assert budget.peak == 1600 * 1200, "never two full-size photos in memory at once"


# -- a loop that dies --------------------------------------------------------------------

class _BrokenQueue(SqsQueue):
    """A real queue whose second receive fails in a way no code path expects."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def receive(self, *args, **kwargs):
        self.calls += 1
        if self.calls > 1:
            raise _Unexpected("the receiver met something nobody planned for")
        return super().receive(*args, **kwargs)


class _Unexpected(BaseException):
    pass


def test_a_loop_that_dies_fails_the_health_check_and_stops_the_worker(fleet, s3, sqs,
                                                                      model_cache, tmp_path):
    settings = WorkerSettings(queue_url=fleet.queue_url, model_cache=model_cache,
                              allowed_models=["tiny"], device="cpu", receive_wait_seconds=0,
                              health_file=tmp_path / "w.health", stop_deadline=5)
    worker = Worker(settings, Engine(settings), _BrokenQueue(sqs, fleet.queue_url),
                    S3Storage(s3), worker_id="dies")
    started = time.monotonic()
    summary = worker.run()
    assert time.monotonic() - started < 30
    assert worker.fatal and "the receiver loop died" in worker.fatal
    healthy, reason = check_health(settings.health_file, max_age=60)
    assert not healthy and "receiver loop died: _Unexpected" in reason
    assert summary.done == 0


# -- enqueue -----------------------------------------------------------------------------

def test_an_object_that_cannot_be_a_job_skips_itself_and_the_rest_is_enqueued(fleet, s3, sqs):
    long_key = "in/" + "x" * 1000 + ".png"  # fits S3, but its output key would not
    for key in ("in/a.png", long_key, "in/b.png"):
        s3.put_object(Bucket=fleet.bucket, Key=key, Body=b"image bytes")
    result = CliRunner().invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "--output",
                                      f"s3://{fleet.bucket}/outputs/", "-m", "tiny", "-p", "p"])
    assert result.exit_code == 0, result.output
    assert "enqueued 2" in result.stdout and "skipped 1" in result.stdout
    assert "skipped: s3://" in result.stderr and "its output key" in result.stderr
    assert "at most 1024" in result.stderr
    got = sqs.receive_message(QueueUrl=fleet.queue_url, MaxNumberOfMessages=10,
                              WaitTimeSeconds=1)["Messages"]
    assert sorted(parse_job(m["Body"]).input.key for m in got) == ["in/a.png", "in/b.png"]


def test_a_folder_file_whose_key_cannot_fit_skips_itself(fleet, s3, sqs, tmp_path: Path):
    folder = tmp_path / "photos"
    deep = folder / ("d" * 200) / ("e" * 200) / ("f" * 200) / ("g" * 200)
    deep.mkdir(parents=True)
    (folder / "ok.png").write_bytes(b"image")
    (deep / ("h" * 240 + ".png")).write_bytes(b"image")
    result = CliRunner().invoke(app, ["enqueue", str(folder), "--bucket", fleet.bucket,
                                      "-m", "tiny", "-p", "p"])
    assert result.exit_code == 0, result.output
    assert "enqueued 1" in result.stdout and "over S3's 1024 bytes" in result.stderr
