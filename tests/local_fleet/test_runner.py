"""``make run``'s runner end to end: an embedded S3+SQS, the producer and a worker as
subprocesses, outputs copied back beside a gallery."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.images import solid_png
from tests.support.paths import REPO
from worker.engine.tiny_model import ensure_tiny_model

pytestmark = pytest.mark.timeout(300)


def test_the_local_fleet_keeps_every_result_even_with_clashing_names(model_cache: Path,
                                                                      tmp_path: Path):
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    for name in ("a.png", "a.jpg", "sub/a.png"):
        (source / name).write_bytes(solid_png((40, 32), color=len(name) * 20))
    out = tmp_path / "out"
    # The model as a relative folder (make run MODEL=./my-model): the fleet gets its
    # absolute path, which the runner admits.
    mine = tmp_path / "my-model"
    shutil.copytree(ensure_tiny_model(model_cache), mine)
    relative = os.path.relpath(mine, REPO)
    env = dict(os.environ, IMG2IMG_MODEL_CACHE=str(model_cache), OMP_NUM_THREADS="2")
    result = subprocess.run(
        [sys.executable, "-m", "local_fleet", "--input", str(source), "--output", str(out),
         "--steps", "4", "--strength", "0.5", "--max-side", "64", "--model", relative],
        cwd=REPO, env=env, capture_output=True,
        text=True, timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["done"] * 3
    assert {r["model"] for r in records} == {str(mine.resolve())}
    outputs = sorted(Path(r["local_output"]).relative_to(out).as_posix() for r in records)
    # a.jpg comes first (sorted), so it keeps a.png; a.png then becomes a_png.png.
    assert outputs == ["a.png", "a_png.png", "sub/a.png"], "no result may overwrite another"
    assert all(Path(r["local_output"]).is_file() for r in records)
    assert f"gallery: {out / 'index.html'}" in result.stdout
    page = (out / "index.html").read_text()
    assert page.count("<img") >= 6, "each input beside its output"
