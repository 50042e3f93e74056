"""Memory modes and speed-ups applied to a freshly loaded pipeline.

- ``fast``: everything resident on the device, channels_last UNet, fused QKV
  projections, SDPA attention, optional ``torch.compile``. Batches many images.
- ``balanced``: model CPU offload (one whole component on the GPU at a time).
- ``lean``: the original script's "memory efficient" switch: sequential CPU offload,
  attention slicing, xformers when installed, plus VAE tiling. With
  ``lean_offload="group"`` (IMG2IMG_LEAN_OFFLOAD): diffusers' leaf-level group offloading
  on a CUDA stream instead of the sequential hooks, and SDPA instead of slicing. Not yet
  measured on a GPU; ``bench.engine_bench`` compares both (cases ``lean``, ``lean-group``).

Offloading only means something with an accelerator; on a CPU the offload part of a
mode is skipped and the rest (slicing, tiling) still applies.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

MEMORY_MODES = ("fast", "balanced", "lean")
LEAN_OFFLOADS = ("sequential", "group")
# Above this many pixels per side the VAE decodes in tiles even in ``fast`` mode: a
# 2048 px decode needs several GB of activations for one image.
VAE_TILING_MIN_SIDE = 1536


def apply_memory_mode(pipe: Any, mode: str, device: torch.device, *,
                      compile: bool = False, lean_offload: str = "sequential",
                      fuse_qkv: bool = True) -> None:
    """``fuse_qkv=False`` keeps Q, K and V apart (a LoRA on them would be bypassed by
    the fused projection)."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory mode must be one of {MEMORY_MODES}, got {mode!r}")
    if lean_offload not in LEAN_OFFLOADS:
        raise ValueError(f"lean offload must be one of {LEAN_OFFLOADS}, got {lean_offload!r}")
    accelerated = device.type != "cpu"
    if mode == "fast":
        pipe.to(device)
        _speed_ups(pipe, compile=compile, fuse_qkv=fuse_qkv)
    elif mode == "balanced":
        if accelerated:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
    elif lean_offload == "group":
        # No attention slicing: SDPA's fused kernels already keep attention memory linear,
        # and slicing would swap them for plain attention per slice.
        if device.type == "cuda":
            _try_xformers(pipe)
        pipe.vae.enable_tiling()
        if accelerated:
            enable_group_offload(pipe, device)
        else:
            pipe.to(device)
    else:
        pipe.enable_attention_slicing()
        if device.type == "cuda":
            _try_xformers(pipe)
        pipe.vae.enable_tiling()
        if accelerated:
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.to(device)


def enable_group_offload(pipe: Any, device: torch.device) -> None:
    """Leaf-level group offloading: weights live on the CPU and each layer is brought to
    ``device`` for its forward; with CUDA the next layer is copied on a side stream while
    the current one computes, so the GPU holds about two layers' weights at a time."""
    pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                              offload_type="leaf_level", use_stream=device.type == "cuda")


def set_vae_tiling_for(pipe: Any, mode: str, width: int, height: int) -> None:
    """Tile the VAE for large images (always in ``lean``); full-frame otherwise, faster."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling"):
        return
    if mode == "lean" or max(width, height) >= VAE_TILING_MIN_SIDE:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


def _speed_ups(pipe: Any, *, compile: bool, fuse_qkv: bool = True) -> None:
    unet = getattr(pipe, "unet", None)
    transformer = getattr(pipe, "transformer", None)  # SD3, Flux
    if unet is not None:
        unet.to(memory_format=torch.channels_last)
    try:
        # One matmul for Q, K and V instead of three; same numbers, fewer launches. Not on
        # SD3/Flux transformers: fused, SD3.5's dual-attention blocks fail in diffusers 0.42.
        # Not while LoRAs may load: a fused projection would bypass a LoRA on Q, K or V.
        if fuse_qkv:
            pipe.fuse_qkv_projections(unet=True, vae=True)
    except Exception as exc:  # noqa: BLE001 - some attention processors cannot fuse
        log.info("fused QKV projections not available: %s", exc)
    if compile:
        options = {"mode": "max-autotune-no-cudagraphs", "fullgraph": False}
        if unet is not None:
            pipe.unet = torch.compile(unet, **options)
        elif transformer is not None:
            pipe.transformer = torch.compile(transformer, **options)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode="max-autotune-no-cudagraphs")


def _try_xformers(pipe: Any) -> None:
    try:
        import xformers  # noqa: F401
    except ImportError:
        log.info("xformers not installed; lean mode uses attention slicing with SDPA")
        return
    try:
        pipe.enable_xformers_memory_efficient_attention()
    except Exception as exc:  # noqa: BLE001 - a mismatched xformers build should not stop us
        log.warning("xformers present but unusable: %s", exc)
