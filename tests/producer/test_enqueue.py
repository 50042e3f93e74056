"""``img2img-producer enqueue`` against the moto server: S3 prefixes, local folders,
dry runs, reproducible picks, idempotent re-runs, bad input."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from common import aws
from contract.job import JobMessage, parse_job
from contract.locations import batch_manifest_key
from producer.cli import app
from tests.support.paths import REPO
from tests.support.queues import depth, drain, put_images

runner = CliRunner()


def count_calls(monkeypatch, service: str, operation: str) -> list[dict]:
    """Make the CLI's clients of ``service`` record each ``operation`` call's params."""
    calls: list[dict] = []
    factory = getattr(aws, f"{service}_client")

    def patched(*args, **kwargs):
        client = factory(*args, **kwargs)
        client.meta.events.register(f"before-parameter-build.{service}.{operation}",
                                    lambda params, **_: calls.append(dict(params)))
        return client

    monkeypatch.setattr(aws, f"{service}_client", patched)
    return calls


def test_enqueue_s3_prefix_lists_every_page_and_skips_outputs(fleet, s3, sqs, monkeypatch):
    images = [f"in/img{i}.{'PNG' if i % 2 else 'jpg'}" for i in range(7)]
    put_images(s3, fleet.bucket, images + ["in/notes.txt", "in/sub/raw.bin",
                                          "outputs/old.png", "in/_batches/b/x.png"])
    lists = count_calls(monkeypatch, "s3", "ListObjectsV2")

    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "tiny",
                                 "-p", "a cat", "--output", f"s3://{fleet.bucket}/in/out/",
                                 "--list-page-size", "2"])

    assert result.exit_code == 0, result.output
    assert "found 7, enqueued 7, skipped 3, failed 0" in result.stdout
    assert len([c for c in lists if c.get("Prefix") == "in/"]) >= 5  # 10 keys, 2 per page
    jobs = drain(sqs, fleet.queue_url)
    assert sorted(j.input.key for j in jobs) == sorted(images)
    assert all(j.output.key.startswith("in/out/") for j in jobs)
    assert all(j.model == "tiny" and j.prompt == "a cat" for j in jobs)
    assert all(j.input_etag for j in jobs)
    batch_id = jobs[0].batch_id
    manifest = json.loads(s3.get_object(Bucket=fleet.bucket, Key=batch_manifest_key(
        "in/out/", batch_id))["Body"].read())
    assert manifest["total"] == 7 and manifest["queue_url"] == fleet.queue_url
    assert manifest["output"] == f"s3://{fleet.bucket}/in/out/"
    assert f"batch {batch_id}" in result.stdout


def test_same_source_twice_gives_same_batch_jobs_and_outputs(fleet, s3, sqs):
    put_images(s3, fleet.bucket, [f"src/{n}.png" for n in "abcd"])
    args = ["enqueue", f"s3://{fleet.bucket}/src/", "-m", "tiny", "-p", "x", "-p", "y"]

    first = runner.invoke(app, args)
    second = runner.invoke(app, args)

    assert first.exit_code == second.exit_code == 0, first.output + second.output
    jobs = drain(sqs, fleet.queue_url)
    assert len(jobs) == 8
    by_id: dict[str, list[JobMessage]] = {}
    for job in jobs:
        by_id.setdefault(job.job_id, []).append(job)
    assert len(by_id) == 4 and all(len(pair) == 2 for pair in by_id.values())
    assert all(a.output == b.output and a.batch_id == b.batch_id for a, b in by_id.values())
    assert len({j.batch_id for j in jobs}) == 1
    assert first.stdout.splitlines()[0] == second.stdout.splitlines()[0]

    other = runner.invoke(app, args + ["--steps", "30", "--dry-run"])
    other_jobs = [parse_job(line) for line in other.stdout.splitlines()]
    assert other_jobs[0].batch_id != jobs[0].batch_id  # other parameters: another batch
    assert not {j.job_id for j in other_jobs} & set(by_id)


def test_dry_run_prints_jobs_and_sends_nothing(fleet, s3, sqs):
    put_images(s3, fleet.bucket, ["in/a.png", "in/b.webp"])

    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "--dry-run",
                                 "-m", "tiny", "-p", "p", "--steps", "4", "--format", "webp"])

    assert result.exit_code == 0, result.output
    jobs = [parse_job(line) for line in result.stdout.splitlines()]
    assert [j.input.key for j in jobs] == ["in/a.png", "in/b.webp"]
    assert all(j.steps == 4 and j.output.key.endswith(".webp") for j in jobs)
    assert depth(sqs, fleet.queue_url) == 0
    assert "Contents" not in s3.list_objects_v2(Bucket=fleet.bucket, Prefix="outputs/")


def test_random_model_and_prompt_picks_are_reproducible_with_seed(fleet, s3):
    keys = [f"in/{i:02d}.png" for i in range(12)]
    put_images(s3, fleet.bucket, keys)
    args = ["enqueue", f"s3://{fleet.bucket}/in/", "--dry-run", "-m", "tiny", "-m", "sd15",
            "-m", "sd-turbo", "-p", "one", "-p", "two", "-p", "three"]

    def picks(seed: str) -> dict[str, tuple[str, str]]:
        out = runner.invoke(app, args + ["--seed", seed])
        assert out.exit_code == 0, out.output
        return {j.input.key: (j.model, j.prompt)
                for j in map(parse_job, out.stdout.splitlines())}

    seven = picks("7")
    assert seven == picks("7")
    assert seven != picks("8")
    assert len({m for m, _ in seven.values()}) > 1 and len({p for _, p in seven.values()}) > 1
    for key, (model, prompt) in seven.items():  # the worker's local mode rule
        rng = random.Random(f"7:{key.removeprefix('in/')}")
        assert (rng.choice(["tiny", "sd15", "sd-turbo"]), rng.choice(
            ["one", "two", "three"])) == (model, prompt)


def test_local_folder_is_uploaded_once_and_enqueued(fleet, s3, sqs, tmp_path):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for name in ["a.png", "b.JPG", "nested/c.webp"]:
        (folder / name).write_bytes(os.urandom(256))
    (folder / "readme.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"x")
    args = ["enqueue", str(folder), "--bucket", fleet.bucket, "-m", "tiny", "-p", "p"]

    dry = runner.invoke(app, args + ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert s3.list_objects_v2(Bucket=fleet.bucket).get("KeyCount") == 0  # dry: no upload
    first = runner.invoke(app, args)
    second = runner.invoke(app, args)
    (folder / "a.png").write_bytes(os.urandom(256))
    third = runner.invoke(app, args)

    assert first.exit_code == second.exit_code == third.exit_code == 0, first.output
    assert "uploaded 3, unchanged 0; found 3, enqueued 3, skipped 1" in first.stdout
    assert "uploaded 0, unchanged 3; found 3, enqueued 3" in second.stdout
    assert "uploaded 1, unchanged 2" in third.stdout
    listed = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(
        Bucket=fleet.bucket, Prefix="inputs/")["Contents"]}
    assert sorted(listed) == ["inputs/a.png", "inputs/b.JPG", "inputs/nested/c.webp"]
    head = s3.head_object(Bucket=fleet.bucket, Key="inputs/b.JPG")
    assert head["Metadata"]["md5"] == head["ETag"].strip('"')
    jobs = drain(sqs, fleet.queue_url)
    assert len(jobs) == 9
    dry_ids = {parse_job(line).job_id for line in dry.stdout.splitlines()}
    first_ids = {j.job_id for j in jobs[:3]} | {j.job_id for j in jobs[3:6]}
    assert dry_ids <= first_ids  # a dry run predicts the ETags, hence the job ids
    assert all(j.input_etag == listed[j.input.key] for j in jobs[6:])


def test_same_bytes_under_another_etag_are_recognised_by_their_md5(fleet, s3, tmp_path):
    """A multipart object's ETag is not its MD5; the md5 metadata still says it is current."""
    import hashlib

    folder = tmp_path / "big"
    folder.mkdir()
    data = os.urandom(6 * 1024 * 1024)  # two parts of >= 5 MiB and the rest
    (folder / "big.png").write_bytes(data)
    upload = s3.create_multipart_upload(Bucket=fleet.bucket, Key="inputs/big.png", Metadata={
        "md5": hashlib.md5(data).hexdigest()})
    parts = []
    for number, (start, end) in enumerate([(0, 5 * 1024 * 1024), (5 * 1024 * 1024, None)], 1):
        part = s3.upload_part(Bucket=fleet.bucket, Key="inputs/big.png", PartNumber=number,
                              UploadId=upload["UploadId"], Body=data[start:end])
        parts.append({"PartNumber": number, "ETag": part["ETag"]})
    s3.complete_multipart_upload(Bucket=fleet.bucket, Key="inputs/big.png",
                                 UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts})
    assert s3.head_object(Bucket=fleet.bucket, Key="inputs/big.png")["ETag"].endswith('-2"')

    result = runner.invoke(app, ["enqueue", str(folder), "--bucket", fleet.bucket, "-m", "tiny",
                                 "-p", "p"])

    assert result.exit_code == 0, result.output
    assert "uploaded 0, unchanged 1" in result.stdout


def test_bad_input_is_a_clear_error_with_status_2(fleet, monkeypatch, tmp_path):
    cases = [
        (["enqueue", str(tmp_path / "missing")], "neither an s3:// URI nor a folder"),
        (["enqueue", f"s3://{fleet.bucket}/in/", "--strength", "1.5"], "--strength: "),
        (["enqueue", f"s3://{fleet.bucket}/in/", "--scheduler", "nope"], "scheduler"),
        (["enqueue", f"s3://{fleet.bucket}/in/", "--max-side", "500"], "--max-side: "),
        (["enqueue", f"s3://{fleet.bucket}/in/", "--seed", "-1"], "--seed: "),
        (["enqueue", "s3://no-such-bucket-here/in/"], "no bucket 'no-such-bucket-here'"),
        (["enqueue", str(tmp_path)], "--bucket"),
    ]
    for args, named in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert named in result.stderr, (args, result.stderr)
    monkeypatch.delenv("IMG2IMG_QUEUE_URL")
    for args in (["enqueue", f"s3://{fleet.bucket}/in/"], ["status"], ["redrive"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "IMG2IMG_QUEUE_URL" in result.stderr, result.output


def test_enqueue_json_gives_the_batch_id_and_counts(fleet, s3, sqs):
    put_images(s3, fleet.bucket, ["in/a.png", "in/b.png"])

    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "tiny",
                                 "-p", "p", "--json"])

    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["batch_id"] and (facts["found"], facts["enqueued"]) == (2, 2)
    assert facts["manifest"] == f"s3://{fleet.bucket}/" + batch_manifest_key(
        "outputs/", facts["batch_id"])
    assert facts["failed"] == [] and "jobs" not in facts
    assert "enqueue" not in result.stderr  # no progress bars
    assert depth(sqs, fleet.queue_url) == 2


def test_console_entry_point_in_a_subprocess(fleet, s3, sqs):
    put_images(s3, fleet.bucket, ["in/a.png", "in/b.png", "in/c.txt"])
    env = {**os.environ, **fleet.environment(), "PYTHONPATH": str(REPO)}

    done = subprocess.run([sys.executable, "-m", "producer.cli", "enqueue",
                           f"s3://{fleet.bucket}/in/", "-m", "tiny", "-p", "p"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    missing = subprocess.run([sys.executable, "-m", "producer.cli", "enqueue",
                              f"s3://{fleet.bucket}/in/"], env={**env, "IMG2IMG_QUEUE_URL": ""},
                             capture_output=True, text=True, timeout=120, cwd=REPO)

    assert done.returncode == 0, done.stderr
    assert "found 2, enqueued 2, skipped 1, failed 0" in done.stdout
    assert depth(sqs, fleet.queue_url) == 2
    assert missing.returncode == 2 and "IMG2IMG_QUEUE_URL" in missing.stderr


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_jobs_go_out_ten_per_call_in_parallel(fleet, s3, sqs, monkeypatch, concurrency):
    import threading
    import time

    put_images(s3, fleet.bucket, [f"in/{i:02d}.png" for i in range(45)])
    sizes: list[int] = []
    state = {"now": 0, "peak": 0}
    lock = threading.Lock()
    factory = aws.sqs_client

    def entering(params, **_):
        with lock:
            sizes.append(len(params["Entries"]))
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.2)  # long enough for calls to overlap when they run in parallel

    def leaving(**_):
        with lock:
            state["now"] -= 1

    def patched(*args, **kwargs):
        client = factory(*args, **kwargs)
        client.meta.events.register("before-parameter-build.sqs.SendMessageBatch", entering)
        client.meta.events.register("after-call.sqs.SendMessageBatch", leaving)
        return client

    monkeypatch.setattr(aws, "sqs_client", patched)
    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "tiny", "-p",
                                 "p", "--concurrency", concurrency])

    assert result.exit_code == 0, result.output
    assert sorted(sizes) == [5, 10, 10, 10, 10]
    assert depth(sqs, fleet.queue_url) == 45
    assert state["peak"] == 1 if concurrency == "1" else state["peak"] > 1
