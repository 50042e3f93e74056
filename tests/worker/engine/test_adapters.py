"""LoRA adapters per job on the tiny model, with real peft adapters: effect and scale,
nothing leaking into later batches, the LRU, batching, the allow-list, and adapters that
do not fit the base."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from contract.errors import LoraMismatch, LoraNotAllowed, LoraNotFound, is_permanent
from contract.job import validate_params
from contract.model_profiles import PROFILES, resolve_params
from tests.support.images import max_abs_diff, mean_abs_diff, pattern_rgb
from tests.support.loras import make_foreign_lora, make_lora, make_lora_with_missing_layers
from worker.batching import BatchKey, GenerationItem, group_batches
from worker.engine.adapters import Adapters
from worker.engine.engine import Engine, load_pipeline
from worker.engine.model_refs import resolve_model
from worker.engine.tiny_model import ensure_tiny_model
from worker.images import prepare_image
from worker.settings import WorkerSettings

FAST = dict(steps=4, strength=0.5, max_side=128)
# One image batched with others differs from it alone by float rounding only.
SAME_MAX = 3
VISIBLE_MEAN = 1.0  # a LoRA at scale 1 moves the tiny model's output by more than this


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    root = tmp_path_factory.mktemp("loras")
    tiny = ensure_tiny_model(model_cache)
    for name, seed in (("style", 1), ("detail", 2), ("third", 3), ("fourth", 4),
                       ("fifth", 5)):
        make_lora(root / name, tiny, seed=seed)
    make_lora(root / "unet-only", tiny, seed=6, text_encoder=False)
    make_foreign_lora(root / "foreign")
    make_lora_with_missing_layers(root / "missing", root / "style")
    return root


def settings(model_cache: Path, lora_dir: Path, **overrides) -> WorkerSettings:
    values = dict(model_cache=model_cache, allowed_models=["tiny"], memory_mode="fast",
                  device="cpu", dtype="auto", compile=False,
                  allowed_loras=[f"{lora_dir}/*"])
    return WorkerSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def engine(model_cache: Path, lora_dir: Path) -> Iterator[Engine]:
    eng = Engine(settings(model_cache, lora_dir))
    eng.model("tiny")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return prepare_image(pattern_rgb(96, 96, 3), 128, 8).image


def lora_key(image: Image.Image, loras: list[tuple[Path, float]]) -> BatchKey:
    params = validate_params(model="tiny", prompt="x", **FAST,
                             loras=[{"ref": str(p), "scale": s} for p, s in loras])
    return BatchKey.of(resolve_params(params, PROFILES["sd1"]), image.size)


def run(engine: Engine, image: Image.Image, loras: list[tuple[Path, float]],
        seed: int = 7) -> Image.Image:
    item = GenerationItem(image, "a watercolor", "", seed)
    return engine.generate(lora_key(image, loras), [item]).images[0]


def test_a_lora_changes_the_output_and_its_scale_matters(engine: Engine, image, lora_dir):
    base = run(engine, image, [])
    full = run(engine, image, [(lora_dir / "style", 1.0)])
    half = run(engine, image, [(lora_dir / "style", 0.5)])
    other = run(engine, image, [(lora_dir / "detail", 1.0)])
    both = run(engine, image, [(lora_dir / "style", 1.0), (lora_dir / "detail", 1.0)])
    assert mean_abs_diff(full, base) > VISIBLE_MEAN
    assert mean_abs_diff(half, full) > VISIBLE_MEAN / 2
    assert mean_abs_diff(half, base) > VISIBLE_MEAN / 2
    assert mean_abs_diff(other, full) > VISIBLE_MEAN
    assert mean_abs_diff(both, full) > VISIBLE_MEAN / 2
    # The same set again gives the same bytes (its weights are loaded once, kept).
    assert run(engine, image, [(lora_dir / "style", 1.0)]).tobytes() == full.tobytes()


def test_a_unet_only_lora_applies_on_unfused_projections(engine: Engine, image, lora_dir):
    # Its weights are on to_q/to_k/to_v only: a fused QKV projection would bypass them.
    base = run(engine, image, [])
    assert mean_abs_diff(run(engine, image, [(lora_dir / "unet-only", 1.0)]), base) > (
        VISIBLE_MEAN)


def test_nothing_leaks_into_a_batch_without_loras(engine: Engine, image, lora_dir,
                                                  model_cache: Path):
    run(engine, image, [(lora_dir / "style", 1.0), (lora_dir / "detail", 0.7)])
    after = run(engine, image, [])
    fresh = Engine(settings(model_cache, lora_dir))
    try:
        assert run(fresh, image, []).tobytes() == after.tobytes()
    finally:
        fresh.close()


def test_jobs_batch_by_adapter_set_and_each_gets_its_own(engine: Engine, image, lora_dir):
    style, detail = [(lora_dir / "style", 1.0)], [(lora_dir / "detail", 1.0)]
    jobs = [(style, 1), ([], 2), (style, 3), (detail, 4), ([], 5)]
    batches = group_batches(jobs, lambda job: lora_key(image, job[0]), max_batch_size=8)
    assert [[seed for _, seed in members] for _, members in batches] == [[1, 3], [2, 5], [4]]
    for key, members in batches:
        outputs = engine.generate(
            key, [GenerationItem(image, "a watercolor", "", seed) for _, seed in members]
        ).images
        for (loras, seed), out in zip(members, outputs, strict=True):
            assert max_abs_diff(out, run(engine, image, loras, seed=seed)) <= SAME_MAX


def test_the_lru_keeps_at_most_its_count_and_the_batch_in_use(model_cache, lora_dir, image):
    eng = Engine(settings(model_cache, lora_dir, max_cached_loras=4))
    try:
        names = ["style", "detail", "third", "fourth", "fifth"]
        for name in names:
            run(eng, image, [(lora_dir / name, 1.0)])
        adapters = eng.model("tiny").adapters
        assert adapters is not None
        assert adapters.loaded() == [str(lora_dir / n) for n in names[1:]]
        assert adapters.stats.evictions == 1
        # An evicted adapter loads again and gives what it gave before.
        again = run(eng, image, [(lora_dir / "style", 1.0)])
        assert again.tobytes() == run(eng, image, [(lora_dir / "style", 1.0)]).tobytes()
        assert adapters.stats.loads == 6
        pipe_adapters = eng.model("tiny").pipeline.get_list_adapters()
        assert len(set(sum(pipe_adapters.values(), []))) == 4  # evicted ones are deleted
    finally:
        eng.close()


def test_the_lru_is_bounded_by_bytes(model_cache, lora_dir):
    pipe = load_pipeline(resolve_model("tiny", model_cache=model_cache), dtype=_float32(),
                         profile=PROFILES["sd1"])
    one = _lora_bytes(lora_dir / "style")
    adapters = Adapters(pipe, model="tiny", resolve=str, max_entries=16,
                        max_bytes=int(one * 2.5))
    for name in ("style", "detail", "third"):
        adapters.activate(((str(lora_dir / name), 1.0),))
    assert adapters.loaded() == [str(lora_dir / "detail"), str(lora_dir / "third")]
    assert adapters.nbytes <= one * 2.5
    # A set larger than the byte bound still runs whole: its members are never evicted.
    adapters.activate(tuple((str(lora_dir / n), 1.0) for n in ("style", "detail", "third")))
    assert len(adapters.loaded()) == 3


def test_loras_outside_the_allow_list_are_refused(engine: Engine, lora_dir: Path):
    engine.check_loras([str(lora_dir / "style")])
    with pytest.raises(LoraNotAllowed, match="IMG2IMG_ALLOWED_LORAS"):
        engine.check_loras(["someone/else-lora"])
    with pytest.raises(LoraNotAllowed, match=r"'\.\.'"):
        engine.check_loras([f"{lora_dir}/../elsewhere/style"])


@pytest.mark.parametrize("name, expected", [
    ("foreign", r"does not fit model 'tiny'.*size mismatch"),
    ("missing", r"does not fit model 'tiny'.*layers the model lacks.*down_blocks\.7"),
])
def test_a_lora_that_does_not_fit_is_a_permanent_error_naming_both(
        engine: Engine, image, lora_dir, name: str, expected: str):
    before = run(engine, image, [])
    with pytest.raises(LoraMismatch, match=expected) as caught:
        run(engine, image, [(lora_dir / name, 1.0)])
    assert str(lora_dir / name) in str(caught.value) and is_permanent(caught.value)
    # Nothing of it stayed: the pipeline gives what it gave before.
    pipe = engine.model("tiny").pipeline
    assert not any("lora" in n and str(lora_dir / name) in n
                   for n in sum(pipe.get_list_adapters().values(), []))
    assert run(engine, image, []).tobytes() == before.tobytes()


def test_a_missing_lora_is_a_permanent_error(engine: Engine, image, lora_dir):
    with pytest.raises(LoraNotFound, match="no-such-lora"):
        run(engine, image, [(lora_dir / "no-such-lora", 1.0)])


def _float32():
    import torch

    return torch.float32


def _lora_bytes(folder: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() * t.element_size()
               for t in load_file(folder / "pytorch_lora_weights.safetensors").values())
