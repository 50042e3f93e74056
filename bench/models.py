"""Full-size Stable Diffusion architectures with random weights, built from their configs.

Nothing is downloaded: the configs below are the published SD 1.5 and SDXL base
architectures, the weights are random (so outputs are noise; speed and memory are what
a real checkpoint of the same shapes costs). Each model is built once, in fp16, and
saved with ``save_pretrained(safe_serialization=True)`` so every benchmark case loads it
from disk through the project's own loading code, as a real model would be.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from worker.engine.tiny_model import save_pipeline_atomically

# Bumped when a config below changes, so a stale build is not reused.
BENCH_MODELS_VERSION = "v1"
CLIP_VOCAB = 49408
_SEED = 0


def default_model_dir() -> Path:
    return Path.home() / ".cache" / "img2img-fleet" / "bench-models"


def model_path(model_dir: Path, name: str) -> Path:
    return model_dir / f"{name}-random-{BENCH_MODELS_VERSION}"


def ensure_model(model_dir: Path, name: str, device: str = "cpu") -> tuple[Path, float]:
    """Build ``name`` ('sd15' or 'sdxl') into ``model_dir`` unless there; (folder, seconds).

    ``device`` is where the random initialisation runs (a GPU makes SDXL's 2.6 B UNet
    take seconds instead of minutes); the saved files are the same either way.
    """
    target = model_path(model_dir, name)
    if (target / "model_index.json").is_file():
        return target, 0.0
    started = time.perf_counter()
    builder = {"sd15": build_sd15, "sdxl": build_sdxl}[name]
    save_pipeline_atomically(lambda: builder(device), target, {"BENCH_MODEL.json": json.dumps(
        {"name": name, "weights": "random", "version": BENCH_MODELS_VERSION})})
    return target, time.perf_counter() - started


def _tokenizer():
    # The same in-memory CLIP tokenizer as the tiny model: a character vocabulary and no
    # merges. Prompts tokenise to different ids than with the real vocabulary, but every
    # prompt is padded to 77 tokens, so the compute is the same.
    from worker.engine.tiny_model import character_tokenizer

    return character_tokenizer()[0]


def _half(module, device: str):
    """fp16 and back on the CPU for saving; a meta-device build (FLOP counting) stays."""
    import torch

    module = module.to(dtype=torch.float16)
    return (module if device == "meta" else module.to("cpu")).eval()


def _sd_vae(sample_size: int, scaling_factor: float, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
        act_fn="silu", sample_size=sample_size, scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _scheduler():
    from diffusers import DPMSolverMultistepScheduler

    # The original script's scheduler (DPM-Solver++), with SD's training noise schedule.
    return DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, algorithm_type="dpmsolver++", steps_offset=1,
    )


def _clip_config(hidden: int, layers: int, heads: int, intermediate: int, *,
                 projection_dim: int = 768, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
        hidden_act=act, projection_dim=projection_dim,
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )


def sd15_unet_config() -> dict:
    return dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                          "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                        "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
    )


def sdxl_unet_config() -> dict:
    return dict(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816, norm_num_groups=32,
    )


def build_sd15(device: str = "cpu"):
    import torch
    from diffusers import StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(_SEED)
    with torch.device(device):
        unet = _half(UNet2DConditionModel(**sd15_unet_config()), device)
        vae = _half(_sd_vae(512, 0.18215, force_upcast=False), device)
        text_encoder = _half(CLIPTextModel(_clip_config(768, 12, 12, 3072)), device)
    return StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(), unet=unet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl(device: str = "cpu"):
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(_SEED)
    with torch.device(device):
        unet = _half(UNet2DConditionModel(**sdxl_unet_config()), device)
        # The stock SDXL VAE config: force_upcast decodes in fp32, as the base model does.
        vae = _half(_sd_vae(1024, 0.13025, force_upcast=True), device)
        text_encoder = _half(CLIPTextModel(_clip_config(768, 12, 12, 3072)), device)
        text_encoder_2 = _half(CLIPTextModelWithProjection(
            _clip_config(1280, 32, 20, 5120, projection_dim=1280, act="gelu")), device)
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer(), tokenizer_2=_tokenizer(), unet=unet,
        scheduler=_scheduler(), requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )
