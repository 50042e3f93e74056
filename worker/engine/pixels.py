"""Images to and from the device as uint8, with the float work done on the device.

Given PIL images and ``output_type="pil"``, diffusers converts on the CPU, in the engine's
thread, while the GPU waits: uint8 -> float32 -> normalised tensor before the call, and
float32 -> x255 -> round -> uint8 -> PIL after it. For a batch of eight 512 px images
that is about 55 ms of CPU per batch on the project's 2-core test machine (23 ms in,
31 ms out), and four times the bytes on the bus. Here only uint8 crosses, which leaves
4-8 ms on the CPU (stacking the arrays, wrapping the outputs); the division, the
pipeline's own normalisation and the rounding run on the device with the same float32
arithmetic, so the pixels are diffusers' own (tests/worker/engine/test_engine.py checks
bit for bit).
On a CPU-only engine nothing is saved, the same work just runs in torch.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def to_device_batch(images: list[Image.Image], device: torch.device) -> torch.Tensor:
    """RGB images of one size -> float32 NCHW in [0, 1] on ``device``.

    The pipeline's image processor normalises a [0, 1] tensor to [-1, 1] itself.
    """
    pixels = np.stack([np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
                       for image in images])
    return torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div_(255)


def from_device_batch(images: torch.Tensor) -> list[Image.Image]:
    """The pipeline's ``output_type="pt"`` result (NCHW in [0, 1]) -> RGB images, rounded
    as diffusers' ``numpy_to_pil`` rounds (float32 x 255, round half to even)."""
    pixels = (images.float().mul(255).round().to(torch.uint8)
              .permute(0, 2, 3, 1).contiguous().cpu().numpy())
    return [Image.fromarray(frame, "RGB") for frame in pixels]
