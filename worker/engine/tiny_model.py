"""``tiny``: a random-weight Stable Diffusion built offline from configs.

Its outputs are noise. It exists so tests, CI and the offline demo run the real
diffusers img2img pipeline with real SD geometry (4-block VAE, 8x downscale, so a
512 px image becomes a 64x64 latent) in well under a second per image on a CPU.
It is built once into the model cache as safetensors and then loaded through the
same path as any other local model.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TINY_ALIAS = "tiny"
# Bumped when the architecture changes, so a stale cached build is not reused.
TINY_VERSION = "v1"
_SEED = 0
_VOCAB_WORDS = 1000


def tiny_model_dir(model_cache: Path) -> Path:
    return model_cache / f"tiny-sd-{TINY_VERSION}"


def ensure_tiny_model(model_cache: Path) -> Path:
    """Build the tiny model into the cache unless it is there; return its folder."""
    target = tiny_model_dir(model_cache)
    if not (target / "model_index.json").is_file():
        save_pipeline_atomically(_build_pipeline, target)
    return target


def save_pipeline_atomically(build: Callable[[], Any], target: Path,
                             extra_files: dict[str, str] | None = None) -> None:
    """Save ``build()`` as safetensors into ``target`` via a temporary sibling and a
    rename, so a concurrent or killed build never leaves a half-written model that
    later loads."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-build-", dir=target.parent))
    try:
        build().save_pretrained(staging, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def character_tokenizer() -> tuple[Any, int]:
    """A CLIP tokenizer built in memory: a character vocabulary and no merges.

    Returns the tokenizer and its vocabulary size. Prompts pad to 77 tokens, so a text
    encoder costs what it would with the real vocabulary.
    """
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    # Byte-level BPE marks word ends with '</w>'; with merges=[] every word splits into
    # characters, which is all a random model needs.
    vocab_tokens = specials + letters + [t + "</w>" for t in letters] + [
        "!", ",", ".", "'", "-", "!</w>", ",</w>", ".</w>", "'</w>", "-</w>"]
    vocab = {tok: i for i, tok in enumerate(vocab_tokens)}
    with tempfile.TemporaryDirectory() as tmp:
        import json

        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77), len(vocab)


def _build_pipeline():
    import torch
    from diffusers import (
        AutoencoderKL,
        DPMSolverMultistepScheduler,
        StableDiffusionImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(_SEED)
    tokenizer, vocab_size = character_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        # Attention only at the lowest resolution (16x16 for 512 px): self-attention at
        # 64x64 would make the tiny model as slow on a CPU as a real one.
        block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=512,
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, algorithm_type="dpmsolver++", steps_offset=1,
    )
    return StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
