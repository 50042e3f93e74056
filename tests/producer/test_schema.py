"""``img2img-producer schema``: the published JSON Schema of the job message."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from contract.job import JobMessage
from producer.cli import app


def test_schema_is_json_with_the_job_fields():
    result = CliRunner().invoke(app, ["schema"])

    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["type"] == "object" and schema["title"] == "JobMessage"
    for name in ("schema_version", "job_id", "batch_id", "input", "output", "model", "prompt",
                 "negative_prompt", "strength", "steps", "guidance_scale", "seed",
                 "output_format", "max_side"):
        assert name in schema["properties"], name
    assert set(schema["required"]) >= {"job_id", "batch_id", "input", "output", "model",
                                       "prompt"}
    assert set(JobMessage.model_fields) == set(schema["properties"])


def test_the_producer_imports_no_worker_torch_or_pillow():
    import subprocess
    import sys

    code = ("import sys, producer.cli, producer.enqueue, producer.status, producer.redrive; "
            "bad = [m for m in ('torch', 'PIL', 'diffusers', 'worker') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_lists_the_model_families_and_their_defaults():
    schema = json.loads(CliRunner().invoke(app, ["schema"]).stdout)
    families = {f["family"]: f for f in schema["x-model-families"]}
    assert set(families) >= {"sd1", "sd2", "sd-turbo", "sdxl", "sdxl-turbo", "sd3", "sd3.5",
                             "flux-dev", "flux-schnell"}
    assert families["sdxl-turbo"] | {"aliases": None} == {
        "family": "sdxl-turbo", "title": "SDXL-Turbo", "aliases": None,
        "pipeline": "StableDiffusionXLImg2ImgPipeline", "max_side": 1024 // 2, "steps": 2,
        "guidance_scale": 0.0, "scheduler": "model", "negative_prompt": True}
    assert families["flux-dev"]["negative_prompt"] is False
    assert schema["properties"]["steps"]["default"] is None  # unset: the family's

    table = CliRunner().invoke(app, ["schema", "--families"])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["family", "max_side", "steps", "guidance", "scheduler",
                                "negative", "aliases"]
    assert lines[1 + list(families).index("sdxl")].split() == [
        "sdxl", "1024", "30", "5.0", "dpmsolver++", "guidance>1", "sdxl"]
    assert "flux-dev  " in table.stdout and " no " in table.stdout
