"""LoRA hot-swap under a real ``torch.compile`` (inductor, as IMG2IMG_COMPILE does): after
the first compiled call, swapping adapter sets never recompiles.

Opt-in (``IMG2IMG_TEST_COMPILE=1``): compiling the tiny UNet on a 2-core CPU took 36 s on
a quiet machine and 13 minutes on a loaded one, too long and too variable for every run.
tests/worker/engine/test_adapter_hotswap.py covers the same path with the compile call
recorded instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from contract.job import validate_params
from tests.support.images import max_abs_diff, pattern_rgb
from tests.support.loras import make_lora
from worker.batching import BatchKey, GenerationItem
from worker.engine.engine import Engine
from worker.engine.tiny_model import ensure_tiny_model
from worker.images import prepare_image
from worker.settings import WorkerSettings

pytestmark = [
    pytest.mark.skipif(os.environ.get("IMG2IMG_TEST_COMPILE") != "1",
                       reason="set IMG2IMG_TEST_COMPILE=1 (inductor on a CPU takes minutes)"),
    pytest.mark.timeout(1800),
]


def test_swaps_on_a_compiled_unet_never_recompile(model_cache: Path, tmp_path: Path):
    tiny = ensure_tiny_model(model_cache)
    make_lora(tmp_path / "a", tiny, seed=41)
    make_lora(tmp_path / "b", tiny, seed=42, text_encoder=False)
    image = prepare_image(pattern_rgb(96, 96, 1), 128, 8).image

    def run(engine: Engine, loras: list[tuple[str, float]]):
        params = validate_params(model="tiny", prompt="x", steps=4, strength=0.5,
                                 max_side=128, loras=[{"ref": str(tmp_path / n), "scale": s}
                                                      for n, s in loras])
        return engine.generate(BatchKey.of(params, image.size),
                               [GenerationItem(image, "a cat", "", 7)]).images[0]

    def engine(compile: bool) -> Engine:
        return Engine(WorkerSettings(model_cache=model_cache, allowed_models=["tiny"],
                                     device="cpu", compile=compile, lora_max_rank=8,
                                     allowed_loras=[f"{tmp_path}/*"]))

    sets = [[("a", 1.0)], [("a", 0.5)], [("a", 1.0), ("b", 0.8)], []]
    named, compiled = engine(False), engine(True)
    try:
        base = run(compiled, [])  # compiles
        torch._dynamo.config.error_on_recompile = True
        for loras in sets:
            assert max_abs_diff(run(compiled, loras), run(named, loras)) <= 3, loras
        assert run(compiled, []).tobytes() == base.tobytes()
    finally:
        torch._dynamo.config.error_on_recompile = False
        named.close()
        compiled.close()
