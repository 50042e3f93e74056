"""One shrunk, random-weight model per family, built offline and saved as a diffusers
folder: the published pipeline, UNet or transformer, VAE, scheduler and text-encoder
classes and configurations, with few layers and channels (the VAE keeps its 8x
downscale). Their outputs are noise; they prove that each family loads and runs through
the worker's real path.

``build_family(name, folder)`` writes the folder once (safetensors; T5 tokenizers get
their ``spiece.model``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import tiny_components as parts

_SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "num_train_timesteps": 1000, "steps_offset": 1}


def _unet(*, linear: bool, sdxl: bool = False) -> Any:
    from diffusers import UNet2DConditionModel

    extra: dict[str, Any] = {}
    cross = parts.HIDDEN
    if sdxl:  # text_time conditioning: pooled text (projection) + 6 size/crop numbers
        cross = 2 * parts.HIDDEN
        extra = {"addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                 "projection_class_embeddings_input_dim": parts.HIDDEN + 6 * 8}
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross, attention_head_dim=4, norm_num_groups=8,
        use_linear_projection=linear, **extra)


def _sd(scheduler: Any, *, sd2: bool) -> tuple[Any, dict]:
    from diffusers import StableDiffusionImg2ImgPipeline

    tokenizer, vocab = parts.clip_tokenizer()
    return StableDiffusionImg2ImgPipeline(
        vae=parts.vae(), tokenizer=tokenizer, unet=_unet(linear=sd2),
        text_encoder=parts.clip_text_encoder(vocab, hidden_act="gelu" if sd2 else "quick_gelu"),
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False), {}


def sd1(work: Path) -> tuple[Any, dict]:
    from diffusers import PNDMScheduler

    return _sd(PNDMScheduler(skip_prk_steps=True, **_SD_SCHEDULE), sd2=False)


def sd2(work: Path) -> tuple[Any, dict]:
    """SD 2.x at 768 px: v-prediction, DDIM, OpenCLIP-style (gelu) text encoder."""
    from diffusers import DDIMScheduler

    return _sd(DDIMScheduler(prediction_type="v_prediction", clip_sample=False,
                             set_alpha_to_one=False, **_SD_SCHEDULE), sd2=True)


def sd_turbo(work: Path) -> tuple[Any, dict]:
    """SD-Turbo: SD 2.1's architecture, Euler with trailing timesteps."""
    from diffusers import EulerDiscreteScheduler

    return _sd(EulerDiscreteScheduler(timestep_spacing="trailing", **_SD_SCHEDULE), sd2=True)


def _sdxl(scheduler: Any) -> tuple[Any, dict]:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    tokenizer, vocab = parts.clip_tokenizer()
    return StableDiffusionXLImg2ImgPipeline(
        vae=parts.vae(), text_encoder=parts.clip_text_encoder(vocab),
        text_encoder_2=parts.clip_text_encoder(vocab, with_projection=True, hidden_act="gelu"),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=_unet(linear=True, sdxl=True),
        scheduler=scheduler, requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True, add_watermarker=False), {}


def sdxl(work: Path) -> tuple[Any, dict]:
    from diffusers import EulerDiscreteScheduler

    return _sdxl(EulerDiscreteScheduler(timestep_spacing="leading", **_SD_SCHEDULE))


def sdxl_turbo(work: Path) -> tuple[Any, dict]:
    from diffusers import EulerAncestralDiscreteScheduler

    return _sdxl(EulerAncestralDiscreteScheduler(timestep_spacing="trailing",
                                                 **_SD_SCHEDULE))


def sd3(work: Path) -> tuple[Any, dict]:
    """SD 3.5 (qk RMS norm, a dual-attention layer): two projected CLIPs and a T5."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Img2ImgPipeline,
    )

    clip, vocab = parts.clip_tokenizer()
    t5, spiece = parts.t5_tokenizer(work)
    t5_width = 2 * parts.HIDDEN  # the two CLIP widths side by side, padded to T5's
    transformer = SD3Transformer2DModel(
        sample_size=64, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=t5_width,
        caption_projection_dim=32, pooled_projection_dim=2 * parts.HIDDEN,
        pos_embed_max_size=96, dual_attention_layers=(0,), qk_norm="rms_norm")
    pipe = StableDiffusion3Img2ImgPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=parts.vae(16, flow=True),
        text_encoder=parts.clip_text_encoder(vocab, with_projection=True), tokenizer=clip,
        text_encoder_2=parts.clip_text_encoder(vocab, with_projection=True,
                                               hidden_act="gelu"),
        tokenizer_2=clip, text_encoder_3=parts.t5_text_encoder(len(t5), t5_width),
        tokenizer_3=t5)
    return pipe, {"tokenizer_3": spiece}


def flux(work: Path) -> tuple[Any, dict]:
    """Flux.1 [dev]: a CLIP and a T5, a flow-matching transformer with guidance embeds."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxImg2ImgPipeline,
        FluxTransformer2DModel,
    )

    clip, vocab = parts.clip_tokenizer()
    t5, spiece = parts.t5_tokenizer(work)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=parts.HIDDEN,
        pooled_projection_dim=parts.HIDDEN, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, base_shift=0.5,
        max_image_seq_len=4096, max_shift=1.15)
    vae = parts.vae(16, flow=True)
    vae.register_to_config(shift_factor=0.1159, scaling_factor=0.3611)
    pipe = FluxImg2ImgPipeline(
        scheduler=scheduler, vae=vae, text_encoder=parts.clip_text_encoder(vocab),
        tokenizer=clip, text_encoder_2=parts.t5_text_encoder(len(t5)), tokenizer_2=t5,
        transformer=transformer)
    return pipe, {"tokenizer_2": spiece}


FAMILY_BUILDS: dict[str, Callable[[Path], tuple[Any, dict]]] = {
    "sd1": sd1, "sd2": sd2, "sd-turbo": sd_turbo, "sdxl": sdxl, "sdxl-turbo": sdxl_turbo,
    "sd3": sd3, "flux": flux,
}
# The family each build is detected as (worker.engine.model_profiles).
DETECTED_AS = {"sd1": "sd1", "sd2": "sd2", "sd-turbo": "sd-turbo", "sdxl": "sdxl",
               "sdxl-turbo": "sdxl-turbo", "sd3": "sd3.5", "flux": "flux-dev"}


def build_family(name: str, folder: Path) -> Path:
    """Build family ``name`` and save it into ``folder`` (safetensors)."""
    import torch

    torch.manual_seed(0)
    work = folder.with_name(folder.name + "-work")
    pipe, spiece_into = FAMILY_BUILDS[name](work)
    pipe.save_pretrained(folder, safe_serialization=True)
    for component, spiece in spiece_into.items():
        parts.copy_spiece(spiece, folder / component)
    return folder
