"""``img2img-worker run`` end to end in a subprocess: real files in, real files out."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from contract.job import validate_params
from tests.support.images import jpeg_bytes, pattern_rgb, png_bytes, webp_bytes
from tests.support.local_cli import FAST_ARGS, Run, run_cli
from worker.engine.tiny_model import ensure_tiny_model
from worker.images import target_size
from worker.local_run import collect_inputs, plan_jobs

RESULT_FIELDS = {"input", "output", "status", "error", "model", "prompt", "seed", "seconds"}
DEFAULT_SIZE_BUCKET = 64


@pytest.fixture(scope="module")
def tiny_copy(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second local model (same weights) referenced by path."""
    copy = tmp_path_factory.mktemp("models") / "tiny-copy"
    shutil.copytree(ensure_tiny_model(model_cache), copy)
    return copy


# -- a folder with good, bad and non-image files -------------------------------------------

SIZES = {"odd.png": (333, 517), "wide.jpg": (200, 120), "sub/nested.webp": (90, 150),
         "clash.png": (100, 100), "clash.jpg": (64, 80)}


@pytest.fixture(scope="module")
def mixed_run(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("mixed")
    src = root / "in"
    (src / "sub").mkdir(parents=True)
    writers = {".png": png_bytes, ".jpg": jpeg_bytes, ".webp": webp_bytes}
    for i, (name, size) in enumerate(SIZES.items()):
        (src / name).write_bytes(writers[Path(name).suffix](pattern_rgb(*size, seed=i)))
    (src / "corrupt.png").write_bytes(b"definitely not a png" * 20)
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    (src / ".hidden.png").write_bytes(b"hidden files are ignored")
    return run_cli([str(src), "-m", "tiny", *FAST_ARGS], cwd=root, model_cache=model_cache,
                   out=root / "out")


def test_mixed_run_exits_1_when_an_image_failed(mixed_run: Run) -> None:
    assert mixed_run.returncode == 1, mixed_run.stderr


def test_mixed_run_outputs_have_input_size_and_name(mixed_run: Run) -> None:
    out = mixed_run.out
    expected = {"odd.png": (333, 517), "wide.png": (200, 120),
                "sub/nested.png": (90, 150)}
    for name, size in expected.items():
        path = out / name
        assert path.is_file(), sorted(p.name for p in out.rglob("*"))
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == size
    # clash.jpg and clash.png both want clash.png: both are kept, with distinct names.
    clash_outputs = sorted(p.name for p in out.glob("clash*"))
    assert len(clash_outputs) == 2 and "clash.png" in clash_outputs
    images = [p for p in out.rglob("*")
              if p.is_file() and p.name not in ("results.jsonl", "index.html")]
    assert len(images) == 5


def test_mixed_run_results_jsonl(mixed_run: Run) -> None:
    records = mixed_run.results
    assert len(records) == 7  # 5 good + corrupt + empty; not the .txt, not the hidden file
    for record in records:
        assert record.keys() >= RESULT_FIELDS
        assert record["model"] == "tiny" and isinstance(record["seconds"], float)
    names = mixed_run.by_name()
    assert set(names) == {"odd.png", "wide.jpg", "nested.webp", "clash.png", "clash.jpg",
                          "corrupt.png", "empty.jpg"}
    done = [r for r in records if r["status"] == "done"]
    assert len(done) == 5
    for record in done:
        assert record["error"] is None and Path(record["output"]).is_file()
        assert isinstance(record["seed"], int) and record["prompt"]
    assert len({r["output"] for r in done}) == 5
    assert Path(names["odd.png"]["output"]) == mixed_run.out / "odd.png"
    assert Path(names["nested.webp"]["output"]) == mixed_run.out / "sub" / "nested.png"


def test_mixed_run_reports_bad_files_with_reason(mixed_run: Run) -> None:
    names = mixed_run.by_name()
    corrupt, empty = names["corrupt.png"], names["empty.jpg"]
    for record, name, reason in ((corrupt, "corrupt.png", "not a recognised image"),
                                 (empty, "empty.jpg", "empty file")):
        assert record["status"] == "failed"
        assert record["output"] is None
        assert record["error"]["type"] == "InvalidImage"
        assert name in record["error"]["message"] and reason in record["error"]["message"]
    assert not (mixed_run.out / "corrupt.png").exists()
    assert not (mixed_run.out / "empty.png").exists()


def test_mixed_run_summary_counts_skipped(mixed_run: Run) -> None:
    assert "done 5, failed 2, skipped 1 (not images)" in mixed_run.stdout, mixed_run.stdout
    assert str(mixed_run.out / "results.jsonl") in mixed_run.stdout


# -- all good, several models and prompts, reproducible picks -----------------------------

GOOD_SIZES = [(120, 90), (130, 97)]  # same model shape, so they batch together


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("good")
    for i in range(6):
        size = GOOD_SIZES[i % 2]
        (src / f"img{i}.png").write_bytes(png_bytes(pattern_rgb(*size, seed=10 + i)))
    return src


PROMPTS = ["a cat", "a dog", "a watercolor"]


def picks_run(good_folder: Path, tiny_copy: Path, model_cache: Path, out: Path,
              *extra: str) -> Run:
    args = [str(good_folder), "-m", "tiny", "-m", str(tiny_copy)]
    for prompt in PROMPTS:
        args += ["-p", prompt]
    return run_cli([*args, "--seed", "7", *FAST_ARGS, *extra], cwd=out.parent,
                   model_cache=model_cache, out=out,
                   env={"IMG2IMG_ALLOWED_MODELS": f"tiny,{tiny_copy}"})


def test_several_models_and_prompts_picked_reproducibly(good_folder: Path, tiny_copy: Path,
                                                        model_cache: Path,
                                                        tmp_path: Path) -> None:
    first = picks_run(good_folder, tiny_copy, model_cache, tmp_path / "a", "--format", "jpg")
    second = picks_run(good_folder, tiny_copy, model_cache, tmp_path / "b", "--format", "jpg")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "done 6, failed 0, skipped 0" in first.stdout

    def picks(run: Run) -> dict[str, tuple[str, str]]:
        return {name: (r["model"], r["prompt"]) for name, r in run.by_name().items()}

    assert picks(first) == picks(second)
    assert len(picks(first)) == 6
    models = {m for m, _ in picks(first).values()}
    prompts = {p for _, p in picks(first).values()}
    assert models <= {"tiny", str(tiny_copy)} and prompts <= set(PROMPTS)
    assert len(set(picks(first).values())) > 1  # really picked, not always the first
    assert all(r["seed"] == 7 and r["status"] == "done" for r in first.results)
    for i in range(6):
        path = tmp_path / "a" / f"img{i}.jpg"
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size == GOOD_SIZES[i % 2]
        # Same seed, same picks, same machine: the same bytes.
        assert path.read_bytes() == (tmp_path / "b" / f"img{i}.jpg").read_bytes()


def test_webp_and_no_keep_size_give_the_model_size(model_cache: Path,
                                                    tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "odd.png").write_bytes(png_bytes(pattern_rgb(333, 517)))
    (src / "wide.jpg").write_bytes(jpeg_bytes(pattern_rgb(300, 200)))
    run = run_cli([str(src), "-m", "tiny", "-p", "x", *FAST_ARGS, "--format", "webp",
                   "--no-keep-size"], cwd=tmp_path, model_cache=model_cache,
                  out=tmp_path / "out")
    assert run.returncode == 0, run.stderr
    for name, size in (("odd", (333, 517)), ("wide", (300, 200))):
        with Image.open(tmp_path / "out" / f"{name}.webp") as image:
            assert image.format == "WEBP"
            assert image.size == target_size(size, 128, DEFAULT_SIZE_BUCKET)
    assert {Path(r["output"]).suffix for r in run.results} == {".webp"}


# -- bad options -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--strength", "2"], {}, "--strength: "),
        (["--max-side", "100"], {}, "--max-side: "),
        (["--batch-size", "0"], {}, "--batch-size: "),
        ([], {"IMG2IMG_MAX_BATCH_SIZE": "0"}, "IMG2IMG_MAX_BATCH_SIZE: "),
        ([], {"IMG2IMG_MEMORY_MODE": "turbo"}, "IMG2IMG_MEMORY_MODE"),
    ],
    ids=["strength", "max-side", "batch-size", "batch-size-env", "env"],
)
def test_bad_option_exits_2_naming_it(args: list[str], env: dict[str, str], named: str,
                                      model_cache: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png_bytes(pattern_rgb(32, 32)))
    run = run_cli([str(tmp_path / "in"), "-m", "tiny", *args], cwd=tmp_path,
                  model_cache=model_cache, out=tmp_path / "out", env=env, timeout=60)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert named in run.stderr
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("case", "env", "message"),
    [
        ("output-file", {}, "is a file, not a folder"),
        ("empty", {}, "no images in"),
        ("gpu", {"IMG2IMG_DEVICE": "gpu"}, "IMG2IMG_DEVICE"),
        ("missing-model", {"IMG2IMG_ALLOWED_MODELS": "org/*", "HF_HUB_OFFLINE": "1"},
         "is not in the Hugging Face cache"),
    ],
)
def test_mistakes_are_one_line_before_any_image_is_tried(case: str, env: dict[str, str],
                                                         message: str, model_cache: Path,
                                                         tmp_path: Path) -> None:
    """Not a traceback, and not after loading a model and 'succeeding' at nothing."""
    source = tmp_path / "in"
    source.mkdir()
    if case != "empty":
        (source / "a.png").write_bytes(png_bytes(pattern_rgb(32, 32)))
    out = tmp_path / "out"
    if case == "output-file":
        out.write_text("not a folder")
    model = "org/missing" if case == "missing-model" else "tiny"
    started = time.monotonic()
    run = run_cli([str(source), "-m", model, "--output-dir", str(out)], cwd=tmp_path,
                  model_cache=model_cache, env=env, timeout=120)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert message in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) <= 2, run.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").is_dir() or not (out / "results.jsonl").exists()


def test_unknown_format_is_a_usage_error(model_cache: Path, tmp_path: Path) -> None:
    run = run_cli([str(tmp_path), "--format", "gif"], cwd=tmp_path, model_cache=model_cache,
                  timeout=60)
    assert run.returncode == 2
    assert "--format" in run.stderr


# -- planning (in process: the naming rules behind the CLI's outputs) ----------------------

def _plan(files: list[tuple[Path, Path]], out: Path, **kwargs) -> list:
    return plan_jobs(files, out, models=kwargs.get("models", ["tiny"]),
                     prompts=kwargs.get("prompts", ["p"]),
                     choice_seed=kwargs.get("seed", 1),
                     make_params=lambda m, p: validate_params(model=m, prompt=p))


def test_collect_inputs_skips_non_images_but_tries_named_files(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.PNG", "d/sub/b.jpeg", "d/readme.txt", "d/.hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found, skipped = collect_inputs([tmp_path / "d", tmp_path / "notes.txt"])
    assert [rel.as_posix() for _, rel in found] == ["a.PNG", "sub/b.jpeg", "notes.txt"]
    assert [p.name for p in skipped] == ["readme.txt"]


def test_picks_depend_only_on_seed_and_relative_path(tmp_path: Path) -> None:
    files = [(tmp_path / f"{i}.png", Path(f"{i}.png")) for i in range(20)]
    models, prompts = ["tiny", "sd15", "sd21"], ["a", "b", "c", "d"]
    first = _plan(files, tmp_path, models=models, prompts=prompts, seed=3)
    again = _plan(files, tmp_path, models=models, prompts=prompts, seed=3)
    fewer = _plan(files[5:], tmp_path, models=models, prompts=prompts, seed=3)
    other = _plan(files, tmp_path, models=models, prompts=prompts, seed=4)
    key = [(j.params.model, j.params.prompt) for j in first]
    assert key == [(j.params.model, j.params.prompt) for j in again]
    assert key[5:] == [(j.params.model, j.params.prompt) for j in fewer]
    assert key != [(j.params.model, j.params.prompt) for j in other]
    assert len(set(key)) > 3


def test_three_inputs_with_the_same_name_get_distinct_outputs(tmp_path: Path) -> None:
    files = [(tmp_path / f"d{i}" / "x.png", Path("x.png")) for i in range(3)]
    outputs = [j.output_path for j in _plan(files, tmp_path / "out")]
    assert len(set(outputs)) == 3, outputs


# -- an output folder inside the input folder, run twice ------------------------------------

@pytest.fixture(scope="module")
def nested_reruns(model_cache: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> tuple[Run, Run]:
    """``run nest --output-dir nest/out`` twice, one image per batch."""
    root = tmp_path_factory.mktemp("nested")
    nest = root / "nest"
    nest.mkdir()
    for i in range(3):
        (nest / f"img{i}.png").write_bytes(png_bytes(pattern_rgb(64, 48, seed=40 + i)))
    args = ["nest", "-m", "tiny", "-p", "x", *FAST_ARGS, "--batch-size", "1"]
    first = run_cli(args, cwd=root, model_cache=model_cache, out=Path("nest/out"))
    second = run_cli([*args, "--json"], cwd=root, model_cache=model_cache,
                     out=Path("nest/out"))
    return (Run(first.returncode, first.stdout, first.stderr, root / "nest" / "out"),
            Run(second.returncode, second.stdout, second.stderr, root / "nest" / "out"))


def test_outputs_inside_the_input_folder_are_not_inputs_of_the_rerun(
        nested_reruns: tuple[Run, Run]) -> None:
    first, second = nested_reruns
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "done 3, failed 0, skipped 0" in first.stdout, first.stdout
    facts = json.loads(second.stdout)  # --json: one object, no bar
    assert (facts["done"], facts["failed"], facts["skipped"]) == (3, 0, 0), facts
    assert facts["results"] == "nest/out/results.jsonl" and facts["failures"] == []
    assert sorted(r["input"] for r in second.results) == [f"nest/img{i}.png" for i in range(3)]
    assert not (second.out / "out").exists()


def test_local_seconds_are_each_jobs_own_not_the_time_since_the_start(
        nested_reruns: tuple[Run, Run]) -> None:
    """One image per batch: the last job waited for two batches before its own; its
    ``seconds`` are its read, its batch and its write, nothing of that wait."""
    records = nested_reruns[1].results
    for record in records:
        own = sum(record["timings"][stage] for stage in ("read", "inference", "write"))
        assert record["seconds"] == pytest.approx(own, abs=0.01), record
    inference = [r["timings"]["inference"] for r in records]
    assert max(r["seconds"] for r in records) < sum(inference)
