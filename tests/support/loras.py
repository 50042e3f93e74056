"""Real LoRA adapters for tests, made with peft on the tiny model (or a model of another
shape) with random non-zero weights, saved in diffusers' LoRA format."""

from __future__ import annotations

from pathlib import Path

import torch

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def make_lora(folder: Path, tiny_dir: Path, *, seed: int, rank: int = 4,
              text_encoder: bool = True, std: float = 0.5) -> Path:
    """A LoRA on the UNet's attention (and the text encoder's), saved as
    ``folder/pytorch_lora_weights.safetensors``; returns ``folder``.

    ``init_lora_weights=False`` gives random A and B; B is redrawn with ``std`` so the
    effect on a random model is large enough to measure."""
    from diffusers import StableDiffusionImg2ImgPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_dir, use_safetensors=True)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=UNET_TARGETS,
                                     init_lora_weights=False))
    layers = {"unet_lora_layers": _randomized(get_peft_model_state_dict(pipe.unet), std)}
    if text_encoder:
        # transformers' own add_adapter wants a newer peft; peft's injection is the same.
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TEXT_TARGETS,
                            init_lora_weights=False)
        inject_adapter_in_model(config, pipe.text_encoder)
        layers["text_encoder_lora_layers"] = _randomized(
            get_peft_model_state_dict(pipe.text_encoder), std)
    StableDiffusionImg2ImgPipeline.save_lora_weights(folder, safe_serialization=True,
                                                     **layers)
    return folder


def make_foreign_lora(folder: Path, *, seed: int = 0) -> Path:
    """A LoRA made for a UNet of another shape (cross-attention width 48, as another
    family's text encoder would give): same layer names, other sizes."""
    from diffusers import StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=48, attention_head_dim=8, norm_num_groups=8)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=UNET_TARGETS,
                                init_lora_weights=False))
    StableDiffusionImg2ImgPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet), safe_serialization=True)
    return folder


def make_lora_with_missing_layers(folder: Path, source: Path) -> Path:
    """``source``'s LoRA with its UNet layers renamed to blocks the tiny model lacks."""
    from safetensors.torch import load_file, save_file

    weights = load_file(source / "pytorch_lora_weights.safetensors")
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k.replace("down_blocks.2.", "down_blocks.7."): v for k, v in weights.items()},
              folder / "pytorch_lora_weights.safetensors")
    return folder


def _randomized(state: dict[str, torch.Tensor], std: float) -> dict[str, torch.Tensor]:
    return {k: (torch.randn_like(v) * std if "lora_B" in k else v) for k, v in state.items()}
