"""What one pipeline call can run together, and grouping ready jobs into such batches.

No torch here: the pipeline and the job sources decide batches without the engine.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image

from contract.job import GenerationParams

T = TypeVar("T")


@dataclass(frozen=True)
class BatchKey:
    """What jobs must share to run in one pipeline call."""

    model: str
    width: int
    height: int
    steps: int
    strength: float
    guidance_scale: float
    scheduler: str
    timeout_seconds: int | None = None  # jobs with a timeout run only with the same one
    loras: tuple[tuple[str, float], ...] = ()  # (ref, scale) of each adapter, in job order

    @classmethod
    def of(cls, params: GenerationParams, size: tuple[int, int],
           timeout_seconds: int | None = None) -> BatchKey:
        """``params`` with the family's defaults filled in (``Job.apply_profile``)."""
        assert params.resolved(), "family defaults are applied before batching"
        return cls(model=params.model, width=size[0], height=size[1], steps=params.steps,
                   strength=params.strength, guidance_scale=params.guidance_scale,
                   scheduler=params.scheduler, timeout_seconds=timeout_seconds,
                   loras=tuple((lora.ref, lora.scale) for lora in params.loras))


@dataclass(frozen=True)
class GenerationItem:
    """One image of a batch: what may differ between the images of one pipeline call."""

    image: Image.Image
    prompt: str
    negative_prompt: str
    seed: int


def group_batches(items: Iterable[T], key_of: Callable[[T], BatchKey],
                  max_batch_size: int) -> list[tuple[BatchKey, list[T]]]:
    """Group by key in first-seen order, each group cut into slices of max_batch_size.

    First-seen order keeps the oldest job's batch first, so no job starves behind a
    stream of jobs with a more common key.
    """
    groups: OrderedDict[BatchKey, list[T]] = OrderedDict()
    for item in items:
        groups.setdefault(key_of(item), []).append(item)
    batches = []
    for key, members in groups.items():
        for start in range(0, len(members), max_batch_size):
            batches.append((key, members[start:start + max_batch_size]))
    return batches
