"""Every model family through the fleet: jobs enqueued by the producer on the embedded
S3+SQS for each family's model as a folder and as an ``s3://`` prefix, run by one
``img2img-worker serve``; beside them, jobs the fleet must refuse (a model outside the
allow-list, a negative prompt on Flux sent past the producer)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contract.model_profiles import PROFILES
from producer.cli import app
from tests.support.batch_runs import new_fleet, result_records
from tests.support.fleet import WorkerProcess, put_job, worker_env
from tests.support.images import pattern_rgb, png_bytes
from tests.support.model_families import DETECTED_AS

runner = CliRunner()


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def family_fleet(moto_endpoint: str, family_models: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory):
    """Enqueue one job per family and model location, run one worker until idle."""
    root = tmp_path_factory.mktemp("family-fleet")
    resources, s3, sqs = new_fleet(moto_endpoint, "fam")
    images = root / "images"
    images.mkdir()
    (images / "photo.png").write_bytes(png_bytes(pattern_rgb(64, 48)))
    expected: dict[str, str] = {}  # model reference -> family
    for name, folder in family_models.items():
        local = root / "models" / name
        shutil.copytree(folder, local)
        for relative in _files(folder):
            s3.upload_file(str(folder / relative), resources.bucket,
                           f"models/{name}/{relative}")
        for ref in (str(local), f"s3://{resources.bucket}/models/{name}/"):
            result = runner.invoke(app, [
                "enqueue", str(images), "--bucket", resources.bucket, "--upload-prefix",
                "in/", "--output", f"s3://{resources.bucket}/out/", "-m", ref, "-p", "a cat",
                "--strength", "0.5", "--max-side", "64"], env=resources.environment())
            assert result.exit_code == 0, result.output
            expected[ref] = DETECTED_AS[name]
    refused = {
        "not allowed": put_job(s3, sqs, resources, "in/photo.png", model="/elsewhere/model",
                               max_side=64),
        "flux negative": put_job(s3, sqs, resources, "in/photo.png", max_side=64,
                                 model=f"s3://{resources.bucket}/models/flux/",
                                 steps=None, negative_prompt="blurry"),
    }
    cache = root / "cache"
    env = worker_env(resources, cache, root, max_cached_models=4, allowed_models=(
        f"{root}/models/*,s3://{resources.bucket}/models/*"))
    env["OMP_NUM_THREADS"] = "1"  # spinning torch threads are slow on a shared machine
    worker = WorkerProcess(env, "--exit-when-idle", "4")
    code = worker.wait(timeout=540)
    return {"code": code, "worker": worker, "records": result_records(s3, resources.bucket),
            "expected": expected, "refused": refused, "cache": cache,
            "bucket": resources.bucket, "models": family_models}


def test_every_family_runs_from_a_folder_and_from_s3(family_fleet) -> None:
    assert family_fleet["code"] == 0, "\n".join(family_fleet["worker"].lines[-30:])
    done = {r["model"]: r for r in family_fleet["records"] if r["status"] == "done"}
    assert set(done) == set(family_fleet["expected"]), [
        (r["model"], r.get("error")) for r in family_fleet["records"]]
    for ref, family in family_fleet["expected"].items():
        record = done[ref]
        profile = PROFILES[family]
        assert record["family"] == family, record
        assert record["generation"]["steps"] == profile.steps
        assert record["generation"]["guidance_scale"] == profile.guidance_scale
        assert record["generation"]["max_side"] == 64


def test_each_s3_model_synced_exactly_its_files_inside_the_cache(family_fleet) -> None:
    for name, folder in family_fleet["models"].items():
        synced = family_fleet["cache"] / "s3" / family_fleet["bucket"] / "models" / name
        assert _files(synced) == _files(folder), name


def test_the_fleet_refuses_what_it_must_naming_why(family_fleet) -> None:
    by_job = {r["job_id"]: r for r in family_fleet["records"]}
    outside = by_job[family_fleet["refused"]["not allowed"].job_id]
    assert outside["status"] == "failed"
    assert outside["error"]["type"] == "ModelNotAllowed"
    assert "IMG2IMG_ALLOWED_MODELS" in outside["error"]["message"]
    negative = by_job[family_fleet["refused"]["flux negative"].job_id]
    assert negative["status"] == "failed" and negative["error"]["type"] == "InvalidJob"
    assert "Flux.1 [dev]" in negative["error"]["message"]
    assert "negative_prompt" in negative["error"]["message"]
