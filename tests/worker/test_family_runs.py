"""Every model family through ``img2img-worker run``, from ``-m /abs/path`` and
``-m ./rel/path`` folders: one run over all of them (one image each), one run at a
family's own working size and steps, and a refusal of what a family would ignore."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from contract.model_profiles import PROFILES
from contract.picks import pick_model_and_prompt
from tests.support.images import pattern_rgb, png_bytes
from tests.support.local_cli import Run, run_cli
from tests.support.model_families import DETECTED_AS

SEED = 7
# One torch thread: on a shared 2-core machine, spinning intra-op threads made a tiny
# model's steps 17x slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
PROMPT = "a watercolor of a cat"


@pytest.fixture(scope="module")
def workdir(family_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``models/<family>`` (the session's builds), the cwd of the runs."""
    root = tmp_path_factory.mktemp("family-runs")
    for name, folder in family_models.items():
        shutil.copytree(folder, root / "models" / name)
    return root


def _names_covering(models: list[str]) -> dict[str, str]:
    """One image name per model that the run's seeded pick gives that model."""
    names: dict[str, str] = {}
    for i in range(500):
        name = f"img{i}.png"
        model, _ = pick_model_and_prompt(models, [PROMPT], seed=SEED, name=name)
        names.setdefault(model, name)
        if len(names) == len(models):
            return names
    raise AssertionError("no image names cover every model")


@pytest.fixture(scope="module")
def all_families_run(workdir: Path, model_cache: Path) -> tuple[Run, dict[str, str]]:
    families = sorted(DETECTED_AS)
    # Half the families by absolute path, half by a path relative to the cwd.
    refs = [str(workdir / "models" / f) if i % 2 else f"./models/{f}"
            for i, f in enumerate(families)]
    resolved = [str((workdir / "models" / f).resolve()) for f in families]
    names = _names_covering(resolved)
    src = workdir / "in"
    src.mkdir()
    for i, model in enumerate(resolved):
        image = pattern_rgb(64 - 8 * (i % 2), 48, seed=i)
        (src / names[model]).write_bytes(png_bytes(image))
    args = [str(src), "--seed", str(SEED), "-p", PROMPT, "--max-side", "64"]
    for ref in refs:
        args += ["-m", ref]
    run = run_cli(args, cwd=workdir, model_cache=model_cache, out=workdir / "out",
                  env={"IMG2IMG_MAX_CACHED_MODELS": "8", **ONE_THREAD}, timeout=600)
    return run, {names[r]: f for r, f in zip(resolved, families, strict=True)}


def test_every_family_runs_from_absolute_and_relative_folders(all_families_run) -> None:
    run, family_of = all_families_run
    assert run.returncode == 0, run.stderr[-3000:]
    records = run.by_name()
    assert set(records) == set(family_of)
    for name, record in records.items():
        family = DETECTED_AS[family_of[name]]
        assert record["status"] == "done", record
        assert record["family"] == family, record
        profile = PROFILES[family]
        # unset parameters came from the family; --max-side from the command line
        assert record["generation"] == {
            "steps": profile.steps, "strength": 0.75, "guidance_scale":
            profile.guidance_scale, "scheduler": profile.scheduler, "max_side": 64}, record
        with Image.open(record["output"]) as out, Image.open(
                run.out.parent / "in" / name) as source:
            assert out.size == source.size


def test_a_turbo_model_runs_at_its_working_size_and_steps(workdir: Path,
                                                          model_cache: Path) -> None:
    src = workdir / "turbo-in"
    src.mkdir()
    (src / "wide.png").write_bytes(png_bytes(pattern_rgb(96, 64)))
    run = run_cli([str(src), "-m", "./models/sdxl-turbo", "-p", PROMPT, "--no-keep-size"],
                  cwd=workdir, model_cache=model_cache, out=workdir / "turbo-out",
                  env=ONE_THREAD)

    assert run.returncode == 0, run.stderr[-3000:]
    (record,) = run.results
    assert record["family"] == "sdxl-turbo"
    assert record["generation"]["steps"] == 2 and record["generation"]["guidance_scale"] == 0
    with Image.open(record["output"]) as out:
        assert out.size == (512, 320)  # SDXL-Turbo's 512 px, aspect kept (64 px buckets)


def test_a_negative_prompt_on_flux_is_refused_before_any_work(workdir: Path,
                                                              model_cache: Path) -> None:
    src = workdir / "flux-in"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes(pattern_rgb(64, 64)))
    run = run_cli([str(src), "-m", "./models/flux", "-p", PROMPT, "--negative-prompt",
                   "blurry"], cwd=workdir, model_cache=model_cache, out=workdir / "flux-out",
                  env=ONE_THREAD)

    assert run.returncode == 2, run.stderr[-3000:]
    assert "negative_prompt" in run.stderr and "Flux.1 [dev]" in run.stderr
    assert not (workdir / "flux-out" / "a.png").exists()


def test_a_missing_model_folder_is_named(workdir: Path, model_cache: Path) -> None:
    run = run_cli([str(workdir / "in"), "-m", "./models/nope"], cwd=workdir,
                  model_cache=model_cache, out=workdir / "nope-out")
    assert run.returncode == 2
    assert "./models/nope" in run.stderr and "model_index.json" in run.stderr
