"""With IMG2IMG_COMPILE the engine swaps LoRA weights into fixed slots made before
compiling (diffusers' hotswap), so the compiled graph never changes.

torch.compile of the tiny UNet takes minutes on a 2-core CPU, so here ``torch.compile``
is recorded and left out: these tests check the path the engine takes under compile
(slots before the compile call, hot-swapped weights, zeroed slots), that it gives the
named-adapter path's output up to float rounding (the slots' padded rank sums in another
order), and that a job without LoRAs gets a fresh worker's output bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from contract.errors import LoraMismatch
from contract.job import validate_params
from contract.model_profiles import PROFILES, resolve_params
from tests.support.images import max_abs_diff, mean_abs_diff, pattern_rgb
from tests.support.loras import make_lora
from worker.batching import BatchKey, GenerationItem
from worker.engine.adapters import SLOT_PREFIX
from worker.engine.engine import Engine
from worker.engine.tiny_model import ensure_tiny_model
from worker.images import prepare_image
from worker.settings import WorkerSettings

ROUNDING_MAX, ROUNDING_MEAN, VISIBLE_MEAN = 3, 0.5, 1.0
SETS: list[list[tuple[str, float]]] = [
    [("style", 1.0)], [("style", 0.5)], [("style", 1.0), ("detail", 0.8)], [("detail", 1.0)],
    [],
]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    root = tmp_path_factory.mktemp("hotswap-loras")
    tiny = ensure_tiny_model(model_cache)
    make_lora(root / "style", tiny, seed=21)
    make_lora(root / "detail", tiny, seed=22, text_encoder=False)
    return root


@pytest.fixture(scope="module")
def compiled_calls() -> Iterator[list[str]]:
    """``torch.compile`` recorded (the module's class name) and returned as is."""
    calls: list[str] = []
    original = torch.compile

    def record(module, *args, **kwargs):
        calls.append(type(getattr(module, "__self__", module)).__name__)
        return module

    torch.compile = record  # type: ignore[assignment]
    yield calls
    torch.compile = original  # type: ignore[assignment]


def engine_for(model_cache: Path, lora_dir: Path, *, compile: bool) -> Engine:
    return Engine(WorkerSettings(
        model_cache=model_cache, allowed_models=["tiny"], device="cpu", compile=compile,
        allowed_loras=[f"{lora_dir}/*"], lora_max_rank=8))


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return prepare_image(pattern_rgb(80, 96, 5), 128, 8).image


def run(engine: Engine, image: Image.Image, lora_dir: Path,
        loras: list[tuple[str, float]]) -> Image.Image:
    params = validate_params(model="tiny", prompt="x", steps=4, strength=0.5, max_side=128,
                             loras=[{"ref": str(lora_dir / n), "scale": s} for n, s in loras])
    key = BatchKey.of(resolve_params(params, PROFILES["sd1"]), image.size)
    return engine.generate(key, [GenerationItem(image, "a cat", "", 9)]).images[0]


def test_hotswap_gives_the_named_adapter_output_and_leaves_nothing_behind(
        compiled_calls: list[str], model_cache: Path, lora_dir: Path, image) -> None:
    eager = engine_for(model_cache, lora_dir, compile=False)
    swapped = engine_for(model_cache, lora_dir, compile=True)
    try:
        fresh_base = run(swapped, image, lora_dir, [])
        assert "UNet2DConditionModel" in compiled_calls  # the UNet went to torch.compile
        adapters = swapped.model("tiny").adapters
        assert adapters is not None and adapters.hotswap
        unet = swapped.model("tiny").pipeline.unet
        slots = [f"{SLOT_PREFIX}{i}" for i in range(4)]
        assert all(slot in unet.peft_config for slot in slots)
        for loras in SETS:
            hot, named = run(swapped, image, lora_dir, loras), run(eager, image, lora_dir, loras)
            assert max_abs_diff(hot, named) <= ROUNDING_MAX, loras
            assert mean_abs_diff(hot, named) < ROUNDING_MEAN, loras
            if loras:  # and the adapters really applied
                assert mean_abs_diff(hot, fresh_base) > VISIBLE_MEAN, loras
        # Swaps copied weights into the slots; the UNet never got an adapter of its own.
        assert adapters.stats.slot_fills == 1 + 1 + 2 + 1
        assert set(unet.peft_config) == set(slots)
        # After the last set (none), every slot is zero again: a fresh worker's output.
        assert run(swapped, image, lora_dir, []).tobytes() == fresh_base.tobytes()
    finally:
        eager.close()
        swapped.close()


def test_a_lora_outside_the_slots_or_above_their_rank_is_refused(
        compiled_calls: list[str], model_cache: Path, lora_dir: Path, image,
        tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    # A conv layer (outside the attention blocks' linear layers the slots cover).
    weights = load_file(lora_dir / "detail" / "pytorch_lora_weights.safetensors")
    weights["unet.conv_in.lora_A.weight"] = torch.randn(4, 4, 3, 3)
    weights["unet.conv_in.lora_B.weight"] = torch.randn(32, 4, 1, 1)
    (tmp_path / "conv").mkdir()
    save_file(weights, tmp_path / "conv" / "pytorch_lora_weights.safetensors")
    make_lora(tmp_path / "wide", ensure_tiny_model(model_cache), seed=23, rank=16)
    engine = engine_for(model_cache, tmp_path, compile=True)  # slots of rank 8
    try:
        with pytest.raises(LoraMismatch, match="IMG2IMG_COMPILE"):
            run(engine, image, tmp_path, [("conv", 1.0)])
        with pytest.raises(LoraMismatch, match="rank 16.*IMG2IMG_LORA_MAX_RANK"):
            run(engine, image, tmp_path, [("wide", 1.0)])
    finally:
        engine.close()
