"""A stand-in for ``worker.engine.engine.Engine`` in in-process pipeline tests: each batch
takes ``seconds`` in ``steps`` steps, asks ``on_step`` after each (as the real engine
does), returns its inputs, and records what it ran."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from contract.job import GenerationParams
from contract.model_profiles import PROFILES, ModelProfile, resolve_params
from worker.batching import BatchKey, GenerationItem
from worker.engine.engine import BatchStats, GenerationInterrupted, GenerationResult


class StubEngine:
    def __init__(self, seconds: float = 0.0, steps: int = 1,
                 fail: Callable[[BatchKey, list[GenerationItem]], BaseException | None]
                 = lambda key, items: None) -> None:
        self.seconds = seconds
        self.steps = steps
        self.fail = fail
        self.batches: list[tuple[BatchKey, list[str]]] = []  # (key, prompts) per call
        self.started = threading.Event()  # set when a batch starts

    def check_model(self, reference: str) -> None:
        return None

    def check_loras(self, refs: list[str]) -> None:
        return None

    def apply_profile(self, params: GenerationParams) -> tuple[GenerationParams, ModelProfile]:
        """Every model is SD 1.x here."""
        return resolve_params(params, PROFILES["sd1"]), PROFILES["sd1"]

    def generate(self, key: BatchKey, items: list[GenerationItem],
                 on_step: Callable[[], bool] | None = None) -> GenerationResult:
        self.batches.append((key, [item.prompt for item in items]))
        self.started.set()
        for _ in range(self.steps):
            time.sleep(self.seconds / self.steps)
            if on_step is not None and on_step():
                raise GenerationInterrupted(f"batch of {len(items)} stopped before its "
                                            "last step")
        error = self.fail(key, items)
        if error is not None:
            raise error
        return GenerationResult(images=[item.image for item in items],
                                stats=BatchStats(pipeline_calls=1))

    def close(self) -> None:
        return None
