"""The engine benchmark's inputs and measuring tools: the workload, one case's result,
the jobs, and device helpers (sync, release, memory peaks)."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

from bench.devstats import DeviceMemorySampler

REPO = Path(__file__).resolve().parent.parent
SAMPLE_IMAGES = REPO / "data" / "input_images"


@dataclass
class Workload:
    model: str  # 'sd15', 'sdxl' or 'tiny'
    folder: str
    size: int
    steps: int
    strength: float
    guidance: float

    @property
    def denoising_steps(self) -> int:
        return min(int(self.steps * self.strength), self.steps)


@dataclass
class CaseResult:
    name: str
    model: str
    description: str
    batch_size: int
    images: int = 0
    seconds: float = 0.0
    images_per_s: float | None = None
    s_per_image: float | None = None
    warmup_s: float | None = None
    load_s: float | None = None
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    device_used_peak_bytes: int | None = None
    device_used_before_bytes: int | None = None
    flops_per_image: float | None = None
    achieved_tflops: float | None = None
    fraction_of_peak: float | None = None
    vs_original: float | None = None
    vs_original_lean: float | None = None
    max_abs_diff_vs_original: float | None = None
    mean_abs_diff_vs_original: float | None = None
    status: str = "ok"
    notes: list[str] = field(default_factory=list)


# -- inputs -----------------------------------------------------------------------------

def make_items(count: int, size: int) -> list:
    """``count`` jobs: the sample images resized to size x size, varied prompts and seeds."""
    from PIL import Image

    from contract.settings import DEFAULT_PROMPTS
    from worker.batching import GenerationItem
    from worker.images import to_rgb

    sources = sorted(p for p in SAMPLE_IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    images = [to_rgb(Image.open(p)).resize((size, size), Image.Resampling.LANCZOS)
              for p in sources] or [Image.new("RGB", (size, size), (120, 90, 60))]
    return [GenerationItem(image=images[i % len(images)],
                           prompt=DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)],
                           negative_prompt="", seed=1000 + i)
            for i in range(count)]


# -- GPU helpers ------------------------------------------------------------------------

def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Measure:
    """Allocator and device-level peaks over a block."""

    def __enter__(self) -> Measure:
        import torch

        release()
        if cuda():
            torch.cuda.reset_peak_memory_stats()
        self.sampler = DeviceMemorySampler().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        sync()
        self.sampler.__exit__(*exc)
        self.allocated = torch.cuda.max_memory_allocated() if cuda() else None
        self.reserved = torch.cuda.max_memory_reserved() if cuda() else None

    def fill(self, result: CaseResult) -> None:
        result.peak_allocated_bytes = self.allocated
        result.peak_reserved_bytes = self.reserved
        result.device_used_peak_bytes = self.sampler.peak_used
        result.device_used_before_bytes = self.sampler.baseline_used


def to_array(image):
    import numpy as np

    return np.asarray(image, dtype=np.float32)
