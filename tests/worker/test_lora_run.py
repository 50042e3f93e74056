"""``img2img-worker run --lora`` end to end in a subprocess, with real peft adapters (a
LoRA that does not fit is a failed record: tests/worker/fleet/test_lora_fleet.py and the
engine's tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.images import pattern_rgb, png_bytes
from tests.support.local_cli import FAST_ARGS, Run, run_cli
from tests.support.loras import make_lora
from worker.engine.tiny_model import ensure_tiny_model

NAMES = ("a.png", "b.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    root = tmp_path_factory.mktemp("lora-run")
    tiny = ensure_tiny_model(model_cache)
    make_lora(root / "loras" / "style", tiny, seed=11)
    (root / "in").mkdir()
    for i, name in enumerate(NAMES):
        (root / "in" / name).write_bytes(png_bytes(pattern_rgb(96, 80, seed=i)))
    return root


def lora_env(folder: Path) -> dict[str, str]:
    return {"IMG2IMG_ALLOWED_LORAS": f"{folder}/loras/*"}


def run_with(folder: Path, model_cache: Path, out: str, *extra: str) -> Run:
    return run_cli([str(folder / "in"), "-m", "tiny", "--seed", "3", *FAST_ARGS, *extra],
                   cwd=folder, model_cache=model_cache, out=folder / out,
                   env=lora_env(folder))


@pytest.fixture(scope="module")
def with_lora(folder: Path, model_cache: Path) -> Run:
    return run_with(folder, model_cache, "styled", "--lora", f"{folder}/loras/style:0.8")


@pytest.fixture(scope="module")
def plain(folder: Path, model_cache: Path) -> Run:
    return run_with(folder, model_cache, "plain")


def test_records_and_gallery_name_the_adapter(with_lora: Run, folder: Path) -> None:
    assert with_lora.returncode == 0, with_lora.stderr
    for record in with_lora.results:
        assert record["status"] == "done"
        assert record["loras"] == [{"ref": f"{folder}/loras/style", "scale": 0.8}]
    gallery = (with_lora.out / "index.html").read_text()
    assert f"{folder}/loras/style:0.8" in gallery


def test_the_adapter_changes_every_output(with_lora: Run, plain: Run) -> None:
    assert plain.returncode == 0, plain.stderr
    assert all(record["loras"] == [] for record in plain.results)
    styled, base = with_lora.by_name(), plain.by_name()
    for name in NAMES:
        assert styled[name]["seed"] == base[name]["seed"] == 3
        assert (Path(styled[name]["output"]).read_bytes()
                != Path(base[name]["output"]).read_bytes())


def test_a_lora_outside_the_allow_list_is_refused_before_any_work(folder: Path,
                                                                  model_cache: Path):
    result = run_with(folder, model_cache, "refused", "--lora", "someone/other-lora")
    assert result.returncode != 0
    assert "IMG2IMG_ALLOWED_LORAS" in result.stderr and "someone/other-lora" in result.stderr
    assert not (folder / "refused" / "results.jsonl").exists()


def test_a_bad_lora_spec_names_it(folder: Path, model_cache: Path) -> None:
    result = run_with(folder, model_cache, "bad", "--lora", f"{folder}/loras/style:9")
    assert result.returncode != 0 and "--lora" in result.stderr and ":9" in result.stderr
