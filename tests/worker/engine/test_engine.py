"""The engine on the tiny model, through the real diffusers img2img pipeline (CPU)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.errors import GenerationFailed, ModelNotAllowed, ModelNotFound, is_permanent
from contract.job import OutputFormat, validate_params
from contract.model_profiles import PROFILES, resolve_params
from tests.support.images import (
    exif_rotated_jpeg_bytes,
    gray_l,
    max_abs_diff,
    mean_abs_diff,
    pattern_rgb,
    png_bytes,
    rgba_transparent_left,
)
from worker.batching import BatchKey, GenerationItem
from worker.engine.engine import Engine
from worker.engine.memory_modes import apply_memory_mode, enable_group_offload
from worker.engine.tiny_model import ensure_tiny_model
from worker.images import decode_image, encode_image, prepare_image, restore_size
from worker.settings import WorkerSettings

MAX_SIDE = 128
FAST = dict(steps=4, strength=0.5)  # 2 denoising steps
# Batched vs single-image runs differ by float rounding only (at most 1-2 levels here);
# different seeds or prompts differ by tens of levels on average.
SAME_MEAN, SAME_MAX, DIFFERENT_MEAN = 0.5, 3, 5.0


def settings(model_cache: Path, **overrides) -> WorkerSettings:
    values = dict(model_cache=model_cache, allowed_models=["tiny"], memory_mode="fast",
                  max_cached_models=2, device="cpu", dtype="auto", compile=False)
    values.update(overrides)
    return WorkerSettings(**values)


def key_for(size: tuple[int, int], model: str = "tiny", **overrides) -> BatchKey:
    params = validate_params(model=model, prompt="x", max_side=MAX_SIDE, **{**FAST, **overrides})
    return BatchKey.of(resolve_params(params, PROFILES["sd1"]), size)  # tiny is SD 1.x


def prepared(width: int, height: int, seed: int = 0, bucket: int = 8):
    return prepare_image(pattern_rgb(width, height, seed), MAX_SIDE, bucket)


def item(image: Image.Image, seed: int, prompt: str = "a watercolor", negative: str = ""):
    return GenerationItem(image=image, prompt=prompt, negative_prompt=negative, seed=seed)


@pytest.fixture(scope="module")
def tiny_dir(model_cache: Path) -> Path:
    return ensure_tiny_model(model_cache)


@pytest.fixture(scope="module")
def engine(model_cache: Path, tiny_dir: Path) -> Iterator[Engine]:
    eng = Engine(settings(model_cache))
    eng.model("tiny")  # load once for the module
    yield eng
    eng.close()


@pytest.fixture
def pipeline_calls(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of every real pipeline __call__ (wrapped on the pipeline class)."""
    cls = type(engine.model("tiny").pipeline)
    original = cls.__call__
    sizes: list[int] = []

    def counting(self, *args, **kwargs):
        sizes.append(len(kwargs["image"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", counting)
    return sizes


@pytest.fixture
def square() -> Image.Image:
    return prepared(96, 96).image  # -> 128x128


def test_tiny_model_is_built_as_safetensors(tiny_dir: Path) -> None:
    assert (tiny_dir / "model_index.json").is_file()
    assert list(tiny_dir.rglob("*.safetensors"))
    assert not list(tiny_dir.rglob("*.bin"))


def test_a_batch_runs_in_one_pipeline_call(engine: Engine, pipeline_calls: list[int]) -> None:
    prep = prepared(150, 100)
    items = [item(prep.image, seed=i, prompt=f"prompt number {i}") for i in range(4)]
    result = engine.generate(key_for(prep.size), items)
    outputs = result.images
    assert pipeline_calls == [4]
    assert result.stats.pipeline_calls == 1
    assert result.stats.oom_splits == 0
    assert len(outputs) == 4
    assert all(o.size == prep.size and o.mode == "RGB" for o in outputs)
    assert prep.size == (128, 88)


def test_same_seed_gives_identical_bytes(engine: Engine, square: Image.Image) -> None:
    key = key_for(square.size)
    first = engine.generate(key, [item(square, seed=1234)]).images[0]
    second = engine.generate(key, [item(square, seed=1234)]).images[0]
    assert first.tobytes() == second.tobytes()
    assert encode_image(first, OutputFormat.PNG) == encode_image(second, OutputFormat.PNG)


def test_different_seeds_differ(engine: Engine, square: Image.Image) -> None:
    a, b = engine.generate(key_for(square.size),
                           [item(square, seed=1), item(square, seed=2)]).images
    assert mean_abs_diff(a, b) > DIFFERENT_MEAN
    # The output is not just the input passed through.
    assert mean_abs_diff(a, square) > DIFFERENT_MEAN


def test_different_prompts_in_one_batch_stay_with_their_image(engine: Engine,
                                                               square: Image.Image) -> None:
    key = key_for(square.size)
    prompts = ["a cat", "zzz qqq", "an oil painting"]
    result = engine.generate(key, [item(square, seed=5, prompt=p) for p in prompts])
    batch = result.images
    assert result.stats.pipeline_calls == 1
    # Same seed, different prompts: different images.
    assert mean_abs_diff(batch[0], batch[1]) > 1.0
    # Each output matches what its prompt gives alone (order and pairing kept).
    for prompt, out in zip(prompts, batch, strict=True):
        solo = engine.generate(key, [item(square, seed=5, prompt=prompt)]).images[0]
        assert mean_abs_diff(out, solo) < SAME_MEAN
        assert max_abs_diff(out, solo) <= SAME_MAX


def test_negative_prompts_change_the_output(engine: Engine, square: Image.Image) -> None:
    key = key_for(square.size)
    plain, negative = engine.generate(key, [item(square, seed=9),
                                            item(square, seed=9, negative="blurry, dark")]
                                      ).images
    assert mean_abs_diff(plain, negative) > 1.0


def test_scheduler_is_applied_and_switching_back_is_clean(engine: Engine,
                                                          square: Image.Image) -> None:
    default = engine.generate(key_for(square.size), [item(square, seed=3)]).images[0]
    euler = engine.generate(key_for(square.size, scheduler="euler"),
                            [item(square, seed=3)]).images[0]
    again = engine.generate(key_for(square.size), [item(square, seed=3)]).images[0]
    assert mean_abs_diff(default, euler) > 0.5
    assert again.tobytes() == default.tobytes()


def test_odd_size_is_restored(engine: Engine) -> None:
    image = decode_image(png_bytes(pattern_rgb(333, 517, seed=4)), max_pixels=10**7)
    prep = prepare_image(image, MAX_SIDE, 64)
    assert prep.size == (64, 128)
    out = engine.generate(key_for(prep.size), [item(prep.image, seed=1)]).images[0]
    assert out.size == prep.size
    assert restore_size(out, prep, keep_size=True).size == (333, 517)
    assert restore_size(out, prep, keep_size=False).size == (64, 128)


@pytest.mark.parametrize(
    ("data", "decoded_size"),
    [
        (png_bytes(rgba_transparent_left(120, 60)), (120, 60)),
        (png_bytes(gray_l(90, 90, 120)), (90, 90)),
        (exif_rotated_jpeg_bytes(100, 50, orientation=6), (50, 100)),
    ],
    ids=["rgba", "grayscale", "exif-rotated"],
)
def test_unusual_inputs_go_through(engine: Engine, data: bytes,
                                   decoded_size: tuple[int, int]) -> None:
    image = decode_image(data, max_pixels=10**7)
    assert image.size == decoded_size and image.mode == "RGB"
    prep = prepare_image(image, MAX_SIDE, 8)
    out = engine.generate(key_for(prep.size), [item(prep.image, seed=11)]).images[0]
    assert out.size == prep.size and out.mode == "RGB"
    assert restore_size(out, prep, keep_size=True).size == decoded_size


# -- the model cache ---------------------------------------------------------------------

def test_second_use_does_not_reload(model_cache: Path, tiny_dir: Path) -> None:
    eng = Engine(settings(model_cache))
    try:
        prep = prepared(64, 64)
        key = key_for(prep.size)
        eng.generate(key, [item(prep.image, seed=1)])
        assert eng.cache.loads == 1
        loaded = eng.model("tiny")
        eng.generate(key, [item(prep.image, seed=2)])
        assert eng.cache.loads == 1 and eng.model("tiny") is loaded
        assert eng.cache.keys() == [("tiny", "fast")]
    finally:
        eng.close()
    assert len(eng.cache) == 0


def test_eviction_with_one_cached_model(model_cache: Path, tiny_dir: Path,
                                        tmp_path: Path) -> None:
    copy = tmp_path / "models" / "tiny-copy"
    shutil.copytree(tiny_dir, copy)
    eng = Engine(settings(model_cache, max_cached_models=1,
                          allowed_models=["tiny", f"{tmp_path}/models/*"]))
    try:
        prep = prepared(64, 64)
        tiny_out = eng.generate(key_for(prep.size), [item(prep.image, seed=1)]).images[0]
        first = eng.model("tiny")
        copy_out = eng.generate(key_for(prep.size, model=str(copy)),
                                [item(prep.image, seed=1)]).images[0]
        assert eng.cache.loads == 2 and eng.cache.evictions == 1
        assert eng.cache.keys() == [(str(copy), "fast")]
        assert eng.model(str(copy)).source.location == str(copy.resolve())
        # Same weights, same seed: the copy gives the same image.
        assert max_abs_diff(tiny_out, copy_out) <= 1
        # Back to tiny: loaded again, the copy goes.
        assert eng.model("tiny") is not first
        assert eng.cache.loads == 3 and eng.cache.keys() == [("tiny", "fast")]
    finally:
        eng.close()


def test_model_not_on_the_allow_list(engine: Engine, square: Image.Image) -> None:
    loads = engine.cache.loads
    with pytest.raises(ModelNotAllowed, match=r"'sd15' is not allowed.*IMG2IMG_ALLOWED_MODELS"):
        engine.model("sd15")
    with pytest.raises(ModelNotAllowed):
        engine.generate(key_for(square.size, model="sd15"), [item(square, seed=1)])
    with pytest.raises(ModelNotAllowed):
        engine.check_model("/some/folder/model")
    assert engine.cache.loads == loads


def test_unknown_model_is_not_found(model_cache: Path, tmp_path: Path) -> None:
    eng = Engine(settings(model_cache, allowed_models=["*"]))
    with pytest.raises(ModelNotFound, match="not-a-model"):
        eng.model("not-a-model")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(ModelNotFound, match="no model_index.json"):
        eng.model(str(empty))
    assert eng.cache.loads == 0 and len(eng.cache) == 0
    assert is_permanent(ModelNotFound("x"))


# -- out of memory ------------------------------------------------------------------------

def test_oom_splits_the_batch_and_keeps_order(engine: Engine,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    prep = prepared(64, 64)
    key = key_for(prep.size)
    items = [item(prep.image, seed=100 + i, prompt=f"image {i}") for i in range(5)]
    reference = engine.generate(key, items).images

    cls = type(engine.model("tiny").pipeline)
    original = cls.__call__
    sizes: list[int] = []

    def oom_above_two(self, *args, **kwargs):
        sizes.append(len(kwargs["image"]))
        if len(kwargs["image"]) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", oom_above_two)
    result = engine.generate(key, items)
    outputs = result.images
    assert sizes == [5, 2, 3, 1, 2]
    assert result.stats.oom_splits == 2
    assert result.stats.pipeline_calls == 5
    assert result.stats.lean_fallbacks == 0
    assert len(outputs) == 5
    for ref, out in zip(reference, outputs, strict=True):
        assert mean_abs_diff(ref, out) < SAME_MEAN
    assert mean_abs_diff(outputs[0], outputs[1]) > DIFFERENT_MEAN


def test_runtime_error_saying_out_of_memory_also_splits(engine: Engine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    prep = prepared(64, 64)
    cls = type(engine.model("tiny").pipeline)
    original = cls.__call__

    def oom(self, *args, **kwargs):
        if len(kwargs["image"]) > 1:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", oom)
    result = engine.generate(key_for(prep.size), [item(prep.image, seed=i) for i in range(2)])
    assert len(result.images) == 2 and result.stats.oom_splits == 1


def test_other_errors_are_not_split(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    prep = prepared(64, 64)
    cls = type(engine.model("tiny").pipeline)
    calls: list[int] = []

    def broken(self, *args, **kwargs):
        calls.append(len(kwargs["image"]))
        raise ValueError("bad tensor shape")

    monkeypatch.setattr(cls, "__call__", broken)
    with pytest.raises(ValueError, match="bad tensor shape") as info:
        engine.generate(key_for(prep.size), [item(prep.image, seed=i) for i in range(4)])
    assert calls == [4] and info.value.batch_stats.oom_splits == 0


def test_oom_at_batch_size_one_falls_back_to_lean_once_then_fails(
        model_cache: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = Engine(settings(model_cache))
    try:
        prep = prepared(64, 64)
        eng.model("tiny")
        cls = type(eng.model("tiny").pipeline)
        modes: list[str] = []

        def always_oom(self, *args, **kwargs):
            sliced = any(type(p).__name__ == "SlicedAttnProcessor"
                         for p in self.unet.attn_processors.values())
            modes.append("lean" if sliced else "fast")
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

        monkeypatch.setattr(cls, "__call__", always_oom)
        with pytest.raises(GenerationFailed, match="out of memory") as info:
            eng.generate(key_for(prep.size), [item(prep.image, seed=1)])
        assert is_permanent(info.value)
        assert modes == ["fast", "lean"]
        assert info.value.batch_stats.lean_fallbacks == 1
        assert info.value.batch_stats.pipeline_calls == 2
        assert ("tiny", "lean") in eng.cache
        assert ("tiny", "fast") not in eng.cache
    finally:
        eng.close()


def test_oom_fallback_to_lean_can_succeed(model_cache: Path, tiny_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    eng = Engine(settings(model_cache))
    try:
        prep = prepared(64, 64)
        cls = type(eng.model("tiny").pipeline)
        original = cls.__call__

        def oom_unless_sliced(self, *args, **kwargs):
            if not any(type(p).__name__ == "SlicedAttnProcessor"
                       for p in self.unet.attn_processors.values()):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", oom_unless_sliced)
        result = eng.generate(key_for(prep.size), [item(prep.image, seed=1),
                                                   item(prep.image, seed=2)])
        outputs = result.images
        assert len(outputs) == 2 and all(o.size == prep.size for o in outputs)
        assert result.stats.oom_splits == 1
        assert result.stats.lean_fallbacks == 2
    finally:
        eng.close()


# -- memory modes --------------------------------------------------------------------------

def _processor_names(pipe) -> set[str]:
    return {type(p).__name__ for p in pipe.unet.attn_processors.values()}


def test_lean_mode_output_is_close_to_fast(engine: Engine, model_cache: Path,
                                           square: Image.Image) -> None:
    lean = Engine(settings(model_cache, memory_mode="lean"))
    try:
        pipe = lean.model("tiny").pipeline
        assert _processor_names(pipe) == {"SlicedAttnProcessor"}  # attention slicing
        assert pipe.vae.use_tiling
        key = key_for(square.size)
        items = [item(square, seed=21), item(square, seed=22, prompt="other")]
        lean_out = lean.generate(key, items).images
        fast_out = engine.generate(key, items).images
        for a, b in zip(lean_out, fast_out, strict=True):
            assert mean_abs_diff(a, b) < SAME_MEAN
            assert max_abs_diff(a, b) <= SAME_MAX
    finally:
        lean.close()


def test_lean_group_offload_keeps_sdpa_and_gives_the_same_pixels(
        model_cache: Path, square: Image.Image) -> None:
    """``lean_offload="group"``: no slicing, VAE tiling; and diffusers' group-offload hooks
    (installed here with the CPU as the onload device, since this machine has no GPU;
    on CUDA they also use a side stream) change nothing in the pixels."""
    from diffusers.hooks.group_offloading import _get_group_onload_device

    lean = Engine(settings(model_cache, memory_mode="lean", lean_offload="group"))
    try:
        pipe = lean.model("tiny").pipeline
        assert "SlicedAttnProcessor" not in _processor_names(pipe)
        assert pipe.vae.use_tiling
        key = key_for(square.size)
        items = [item(square, seed=23), item(square, seed=24, prompt="other")]
        before = lean.generate(key, items).images
        enable_group_offload(pipe, torch.device("cpu"))
        assert _get_group_onload_device(pipe.unet) == torch.device("cpu")
        after = lean.generate(key, items).images
        for a, b in zip(before, after, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    finally:
        lean.close()
    with pytest.raises(ValueError, match="lean offload"):
        apply_memory_mode(pipe, "lean", torch.device("cpu"), lean_offload="groups")


def test_fast_mode_matches_an_unoptimised_diffusers_pipeline(engine: Engine, tiny_dir: Path,
                                                             square: Image.Image) -> None:
    from diffusers import AutoPipelineForImage2Image

    fast_pipe = engine.model("tiny").pipeline
    assert any(name.startswith("Fused") for name in _processor_names(fast_pipe))
    assert fast_pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    plain = AutoPipelineForImage2Image.from_pretrained(tiny_dir, use_safetensors=True,
                                                       local_files_only=True)
    plain.set_progress_bar_config(disable=True)
    assert not any(name.startswith("Fused") for name in _processor_names(plain))

    prompts, seeds = ["a cat", "a dog"], [31, 32]
    expected = plain(prompt=prompts, image=[square, square], strength=0.5,
                     num_inference_steps=4, guidance_scale=7.5,
                     generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                     output_type="pil").images
    got = engine.generate(key_for(square.size),
                          [item(square, seed=s, prompt=p) for p, s in zip(prompts, seeds,
                                                                          strict=True)]).images
    for a, b in zip(expected, got, strict=True):
        assert a.size == b.size
        assert mean_abs_diff(a, b) < SAME_MEAN
        assert max_abs_diff(a, b) <= SAME_MAX
    arr = np.asarray(got[0])
    assert arr.std() > 1  # not a blank image


def test_uint8_device_path_gives_the_same_pixels_as_diffusers_pil_path(
        engine: Engine, square: Image.Image) -> None:
    """The engine hands the pipeline uint8 pixels and takes its output as a tensor
    (worker/engine/pixels.py); the same pipeline given PIL images and asked for PIL output must
    produce the very same bytes."""
    other = square.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    prompts, seeds = ["a cat", "a dog"], [41, 42]
    key = key_for(square.size)
    got = engine.generate(key, [
        item(image, seed=s, prompt=p)
        for image, p, s in zip([square, other], prompts, seeds, strict=True)]).images
    pipe = engine.model("tiny").pipeline  # the scheduler generate() set is still in place
    expected = pipe(prompt=prompts, image=[square, other], strength=key.strength,
                    num_inference_steps=key.steps, guidance_scale=key.guidance_scale,
                    generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                    output_type="pil").images
    for a, b in zip(expected, got, strict=True):
        assert (a.mode, a.size) == (b.mode, b.size)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.asarray(got[0]).std() > 1
