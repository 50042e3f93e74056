"""``make run``'s runner end to end: an embedded S3+SQS, the producer and a worker as
subprocesses, outputs copied back beside a gallery."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
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


# -- two workers, the emulator kept up, a failed rerun, a Ctrl-C --------------------------

FAST = ["--steps", "4", "--strength", "0.5", "--max-side", "64"]


class Runner:
    """``python -m local_fleet`` in a subprocess, its output read as it comes."""

    def __init__(self, model_cache: Path, *args: str) -> None:
        env = dict(os.environ, IMG2IMG_MODEL_CACHE=str(model_cache), OMP_NUM_THREADS="2")
        self.proc = subprocess.Popen([sys.executable, "-m", "local_fleet", *args], cwd=REPO,
                                     env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, i=into: i.extend(s), daemon=True).start()

    def wait_for(self, start: str, timeout: float = 240) -> None:
        """Until a line of stdout starts with ``start``."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith(start) for line in list(self.out)):
            assert self.proc.poll() is None, "".join(self.out + self.err)
            assert time.monotonic() < deadline, "".join(self.out + self.err)
            time.sleep(0.1)

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)

    def finish(self, timeout: float = 280) -> int:
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.2)  # the readers' last lines
        return code

    @property
    def text(self) -> str:
        return "".join(self.out + self.err)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def records_in(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def kept_run(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two workers over four pictures, the emulator kept up: the producer is run
    against it from outside, then a Ctrl-C ends the runner."""
    root = tmp_path_factory.mktemp("kept")
    source = root / "in"
    source.mkdir()
    for i in range(4):
        (source / f"p{i}.png").write_bytes(solid_png((40, 32), color=40 * i))
    runner = Runner(model_cache, "--input", str(source), "--output", str(root / "out"),
                    "--workers", "2", "--keep", *FAST)
    runner.wait_for("img2img-producer status --batch-id")
    exports = dict(line.removeprefix("export ").strip().split("=", 1)
                   for line in runner.out if line.startswith("export "))
    status = subprocess.run([str(Path(sys.executable).with_name("img2img-producer")),
                             "status", "--batch-id", "local-fleet"],
                            env=dict(os.environ, **exports), capture_output=True, text=True,
                            timeout=60)
    code = runner.interrupt()
    return {"root": root, "out": root / "out", "runner": runner, "status": status,
            "code": code, "records": records_in(root / "out")}


def test_two_workers_share_the_jobs(kept_run: dict) -> None:
    records = kept_run["records"]
    assert [r["status"] for r in records] == ["done"] * 4, kept_run["runner"].text
    assert {r["worker"] for r in records} == {"local-worker-1", "local-worker-2"}


def test_keep_leaves_the_embedded_s3_and_sqs_up_for_the_producer(kept_run: dict) -> None:
    status = kept_run["status"]
    assert status.returncode == 0, status.stdout + status.stderr
    assert "batch local-fleet: done 4, failed 0, total 4" in status.stdout
    assert kept_run["code"] == 0, kept_run["runner"].text
    assert "embedded S3+SQS stopped" in kept_run["runner"].text
    assert "Traceback" not in kept_run["runner"].text


def test_a_failed_rerun_leaves_no_earlier_outputs_and_no_logs_on_screen(
        kept_run: dict, model_cache: Path) -> None:
    """The same output folder, a model that cannot load: every job fails, the earlier
    run's images go, the screen has the reasons (not JSON logs, not tracebacks), and a
    model that never loaded costs no GPU time."""
    empty_model = kept_run["root"] / "not-a-model"
    empty_model.mkdir()
    runner = Runner(model_cache, "--input", str(kept_run["root"] / "in"), "--output",
                    str(kept_run["out"]), "--model", str(empty_model), *FAST)
    code = runner.finish()

    out = kept_run["out"]
    assert code == 1, runner.text
    assert [r["status"] for r in records_in(out)] == ["failed"] * 4
    assert not list(out.glob("*.png")), "the earlier run's outputs are gone"
    assert "ModelNotFound" in runner.text and "no model_index.json" in runner.text
    assert "Traceback" not in runner.text and '"level"' not in runner.text
    assert ", gpu " not in runner.text
    assert "no model_index.json" in (out / "logs" / "local-worker-1.log").read_text()


def test_ctrl_c_stops_the_workers_at_once_without_a_traceback(model_cache: Path,
                                                              tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for i in range(4):
        (source / f"p{i}.png").write_bytes(solid_png((256, 256), color=40 * i))
    runner = Runner(model_cache, "--input", str(source), "--output", str(tmp_path / "out"),
                    "--steps", "200", "--max-side", "256")
    runner.wait_for("follow it:")
    children = runner.children()
    time.sleep(1)
    started = time.monotonic()
    code = runner.interrupt()
    stopped_in = time.monotonic() - started

    assert code == 130, runner.text
    assert "interrupted: the workers were stopped" in runner.text
    assert "Traceback" not in runner.text and "KeyboardInterrupt" not in runner.text
    assert children and not [pid for pid in children if alive(pid)], "no worker outlives it"
    assert stopped_in < 30
