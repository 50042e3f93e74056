"""Choosing the torch device and dtype."""

from __future__ import annotations

import torch

from contract.settings import SettingsError

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SettingsError(f"IMG2IMG_DEVICE={name!r} but CUDA is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """fp16 on GPUs (as the original), fp32 on CPU where fp16 kernels are slow or missing."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if name == "float16" and device.type == "cpu":
        raise SettingsError("IMG2IMG_DTYPE=float16 is not supported on the CPU; use "
                            "float32 or bfloat16")
    return _DTYPES[name]


def configure_backends(device: torch.device) -> None:
    """TF32 matmuls and cuDNN autotuning on CUDA: free speed at fp32-adjacent accuracy."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_device_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
