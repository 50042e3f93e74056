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
