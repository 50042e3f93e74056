"""LoRAs per job through the fleet: jobs enqueued by the real producer (a jobs file with a
``loras`` column, and ``--lora``), one ``img2img-worker serve`` run shared by every case,
adapters from a folder and from ``s3://`` (synced into the cache)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from producer.cli import app
from tests.support.batch_runs import result_records
from tests.support.fleet import WorkerProcess, worker_env
from tests.support.images import pattern_rgb, png_bytes
from tests.support.local_cli import run_cli
from tests.support.loras import make_foreign_lora, make_lora
from worker.engine.tiny_model import ensure_tiny_model

pytestmark = pytest.mark.timeout(600)
runner = CliRunner()
COMMON = ["-m", "tiny", "-p", "a test", "--steps", "4", "--strength", "0.5", "--max-side",
          "64", "--seed", "5"]


@pytest.fixture(scope="module")
def fleet_run(moto_endpoint: str, model_cache: Path, tmp_path_factory):
    from tests.support.batch_runs import new_fleet

    root = tmp_path_factory.mktemp("lora-fleet")
    resources, s3, _ = new_fleet(moto_endpoint, "lora")
    tiny = ensure_tiny_model(model_cache)
    style = make_lora(root / "loras" / "style", tiny, seed=31)
    make_foreign_lora(root / "loras" / "foreign")
    s3.upload_file(str(style / "pytorch_lora_weights.safetensors"), resources.bucket,
                   "loras/style.safetensors")
    image = png_bytes(pattern_rgb(64, 48, seed=2))
    (root / "in").mkdir()
    (root / "in" / "same.png").write_bytes(image)
    for name in ("s3-style", "local-half", "plain", "foreign", "refused", "flag"):
        s3.put_object(Bucket=resources.bucket, Key=f"in/{name}.png", Body=image)
    s3_ref = f"s3://{resources.bucket}/loras/style.safetensors"
    jobs = root / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(row) for row in [
        {"input": "in/s3-style.png", "loras": [s3_ref]},
        {"input": "in/local-half.png", "loras": f"{root}/loras/style:0.5"},
        {"input": "in/plain.png"},
        {"input": "in/foreign.png", "loras": [{"ref": f"{root}/loras/foreign", "scale": 1}]},
        {"input": "in/refused.png", "loras": "someone/other-lora"},
    ]) + "\n")
    env = resources.environment()
    for args in (["--jobs", str(jobs)],
                 ["--jobs", str(_one_row(root, "in/flag.png")), "--lora",
                  f"{root}/loras/style:0.8", "--batch-id", "flagged"]):
        result = runner.invoke(app, ["enqueue", f"s3://{resources.bucket}/",
                                     "--output", f"s3://{resources.bucket}/out/",
                                     *COMMON, *args], env=env)
        assert result.exit_code == 0, result.output
    allowed = f"s3://{resources.bucket}/loras/*,{root}/loras/*"
    worker = WorkerProcess(worker_env(resources, model_cache, root, max_batch_size=4,
                                      allowed_loras=allowed), "--exit-when-idle", "4")
    assert worker.wait(timeout=500) == 0, "\n".join(worker.lines[-30:])
    records = {Path(r["input"]).stem: r for r in result_records(s3, resources.bucket)}
    outputs = {name: s3.get_object(Bucket=resources.bucket, Key=r["output"].split("/", 3)[3])[
        "Body"].read() for name, r in records.items() if r["status"] == "done"}
    return root, s3_ref, records, outputs


def _one_row(root: Path, key: str) -> Path:
    path = root / "flag.jsonl"
    path.write_text(json.dumps({"input": key}) + "\n")
    return path


def test_records_name_their_adapters(fleet_run) -> None:
    root, s3_ref, records, _ = fleet_run
    assert {name: r["status"] for name, r in records.items()} == {
        "s3-style": "done", "local-half": "done", "plain": "done", "flag": "done",
        "foreign": "failed", "refused": "failed"}
    assert records["s3-style"]["loras"] == [{"ref": s3_ref, "scale": 1.0}]
    assert records["local-half"]["loras"] == [{"ref": f"{root}/loras/style", "scale": 0.5}]
    assert records["flag"]["loras"] == [{"ref": f"{root}/loras/style", "scale": 0.8}]
    assert records["plain"]["loras"] == []


def test_adapters_and_their_scales_change_the_output(fleet_run) -> None:
    _, _, _, outputs = fleet_run
    # One input, one seed: only the adapter set differs.
    images = [outputs[n] for n in ("plain", "s3-style", "local-half", "flag")]
    assert len(set(images)) == 4


def test_refusals_and_mismatches_are_failed_records_naming_both(fleet_run) -> None:
    root, _, records, _ = fleet_run
    foreign = records["foreign"]["error"]
    assert foreign["type"] == "LoraMismatch"
    assert f"{root}/loras/foreign" in foreign["message"] and "'tiny'" in foreign["message"]
    refused = records["refused"]["error"]
    assert refused["type"] == "LoraNotAllowed"
    assert "someone/other-lora" in refused["message"]
    assert "IMG2IMG_ALLOWED_LORAS" in refused["message"]


def test_a_job_without_loras_after_lora_batches_matches_a_fresh_worker(
        fleet_run, model_cache: Path) -> None:
    root, _, records, outputs = fleet_run
    assert records["plain"]["seed"] == 5
    fresh = run_cli([str(root / "in" / "same.png"), *COMMON], cwd=root,
                    model_cache=model_cache, out=root / "fresh",
                    env={"IMG2IMG_ALLOWED_LORAS": f"{root}/loras/*"})
    assert fresh.returncode == 0, fresh.stderr
    assert Path(fresh.results[0]["output"]).read_bytes() == outputs["plain"]
