"""``img2img-worker run`` as a subprocess, and what it left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

FAST_ARGS = ["--steps", "4", "--strength", "0.5", "--max-side", "128"]


def worker_exe() -> str:
    exe = Path(sys.executable).parent / "img2img-worker"
    if exe.exists():
        return str(exe)
    found = shutil.which("img2img-worker")
    assert found, "img2img-worker is not installed"
    return found


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    out: Path

    @property
    def results(self) -> list[dict]:
        lines = (self.out / "results.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def by_name(self) -> dict[str, dict]:
        return {Path(r["input"]).name: r for r in self.results}


def run_cli(args: list[str], *, cwd: Path, model_cache: Path, out: Path | None = None,
            env: dict[str, str] | None = None, timeout: float = 240) -> Run:
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("IMG2IMG_")}
    environ.update({"IMG2IMG_MODEL_CACHE": str(model_cache), "IMG2IMG_DEVICE": "cpu",
                    "NO_COLOR": "1", **(env or {})})
    command = [worker_exe(), "run", *args]
    if out is not None:
        command += ["--output-dir", str(out)]
    proc = subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=timeout)
    return Run(proc.returncode, proc.stdout, proc.stderr, out or cwd)
