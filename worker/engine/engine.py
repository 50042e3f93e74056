"""The diffusers img2img engine: warm pipelines, one pipeline call per batch.

A batch is a list of jobs that share a :class:`BatchKey` (model, size, steps,
strength, guidance, scheduler); prompts and seeds may differ per image. Each image has
its own ``torch.Generator``, so an image's noise depends only on its seed, not on
which batch it ran in. ``generate`` returns the images with what the call really did
(``BatchStats``): nothing is left on the engine for the caller to read afterwards.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from contract.errors import (
    GenerationFailed,
    Interrupted,
    LoraNotAllowed,
    ModelNotFound,
    ModelNotSupported,
    StorageUnavailable,
)
from contract.job import GenerationParams
from contract.loras import check_lora_allowed
from contract.model_profiles import ModelProfile, resolve_params
from worker.batching import BatchKey, GenerationItem
from worker.engine.adapters import Adapters
from worker.engine.devices import (
    configure_backends,
    is_out_of_memory,
    pick_device,
    pick_dtype,
    release_device_memory,
)
from worker.engine.lora_refs import resolve_lora
from worker.engine.memory_modes import apply_memory_mode, set_vae_tiling_for
from worker.engine.model_cache import ModelCache
from worker.engine.model_families import ModelResolver
from worker.engine.model_refs import ModelSource, check_allowed
from worker.engine.pixels import from_device_batch, to_device_batch
from worker.engine.schedulers import make_scheduler
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

# Fraction of the GPU the warm cache may fill before evicting the least recently used.
GPU_CACHE_FRACTION = 0.8
# A model that failed to load is not tried again for this long.
MODEL_RETRY_SECONDS = 60.0


class GenerationInterrupted(Interrupted):
    """The batch was stopped between denoising steps (shutdown); its outputs are void."""


StepHook = Callable[[], bool]


@dataclass
class LoadedModel:
    pipeline: Any
    source: ModelSource
    profile: ModelProfile
    mode: str
    load_seconds: float
    schedulers: dict[str, Any] = field(default_factory=dict)
    adapters: Adapters | None = None  # when IMG2IMG_ALLOWED_LORAS admits any
    sized_call: bool = False  # the pipeline takes height/width (else the image's size)


@dataclass
class BatchStats:
    """What one ``Engine.generate`` call really did, for metrics."""

    pipeline_calls: int = 0
    oom_splits: int = 0
    lean_fallbacks: int = 0
    model_load_seconds: float = 0.0
    peak_memory_bytes: int | None = None


@dataclass(frozen=True)
class GenerationResult:
    images: list[Image.Image]  # in the order of the items
    stats: BatchStats


@dataclass
class _Call:
    """The state of one ``generate`` call, passed down instead of kept on the engine."""

    stats: BatchStats
    on_step: StepHook | None


class Engine:
    def __init__(self, settings: WorkerSettings,
                 s3_client_factory: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(settings.dtype, self.device)
        self.mode = settings.memory_mode
        self._s3_client_factory = s3_client_factory  # LoRA refs sync through it too
        self.models = ModelResolver(settings.model_cache, s3_client_factory)
        configure_backends(self.device)
        budget = None
        if self.device.type == "cuda":
            budget = int(torch.cuda.get_device_properties(self.device).total_memory
                         * GPU_CACHE_FRACTION)
        self.cache: ModelCache[tuple[str, str], LoadedModel] = ModelCache(
            self._load,
            max_entries=settings.max_cached_models,
            on_evict=self._unload,
            memory_in_use=self._memory_in_use,
            memory_budget=budget,
        )
        self._failed_loads: dict[tuple[str, str], tuple[float, Exception]] = {}

    # -- models ---------------------------------------------------------------------

    def check_model(self, reference: str) -> None:
        """Raise ModelNotAllowed for a model outside the allow-list (cheap, no loading)."""
        check_allowed(reference, self.settings.allowed_models)

    def check_loras(self, refs: list[str]) -> None:
        """Raise LoraNotAllowed for a LoRA outside IMG2IMG_ALLOWED_LORAS (no loading)."""
        for ref in refs:
            check_lora_allowed(ref, self.settings.allowed_loras)

    def profile(self, reference: str) -> ModelProfile:
        """The model's family profile (allow-listed; resolves, syncs an s3:// model, reads
        its configs: no weights load)."""
        self.check_model(reference)
        return self.models.resolve(reference).profile

    def apply_profile(self, params: GenerationParams) -> tuple[GenerationParams, ModelProfile]:
        """``params`` with the family's defaults where unset; InvalidJob for a parameter
        the family would ignore (``contract.model_profiles.resolve_params``)."""
        profile = self.profile(params.model)
        return resolve_params(params, profile), profile

    def model(self, reference: str, mode: str | None = None) -> LoadedModel:
        """The warm model; a model that just failed to load fails again at once for
        MODEL_RETRY_SECONDS instead of every job paying for the attempt."""
        self.check_model(reference)
        key = (reference, mode or self.mode)
        failed = self._failed_loads.get(key)
        if failed is not None and time.monotonic() - failed[0] < MODEL_RETRY_SECONDS:
            raise type(failed[1])(f"{failed[1]} (failed {time.monotonic() - failed[0]:.0f} s "
                                  f"ago; tried again after {MODEL_RETRY_SECONDS:.0f} s)")
        try:
            return self.cache.get(key)
        except (ModelNotFound, StorageUnavailable) as exc:
            self._failed_loads[key] = (time.monotonic(), exc)
            raise

    def _load(self, key: tuple[str, str]) -> LoadedModel:
        reference, mode = key
        started = time.perf_counter()
        resolved = self.models.resolve(reference)
        source, profile = resolved.source, resolved.profile
        pipe = load_pipeline(source, self.dtype, profile)
        adapters = self._adapters_for(pipe, reference)  # before compiling: its slots
        apply_memory_mode(pipe, mode, self.device, compile=self.settings.compile,
                          lean_offload=self.settings.lean_offload, fuse_qkv=adapters is None)
        seconds = time.perf_counter() - started
        log.info("loaded model %s (%s; %s, %s, %s) in %.2fs", reference, profile.family, mode,
                 self.device, str(self.dtype).removeprefix("torch."), seconds)
        sized = {"height", "width"} <= set(inspect.signature(type(pipe).__call__).parameters)
        return LoadedModel(pipeline=pipe, source=source, profile=profile, mode=mode,
                           load_seconds=seconds, sized_call=sized, adapters=adapters)

    def _adapters_for(self, pipe: Any, reference: str) -> Adapters | None:
        s = self.settings
        if not s.allowed_loras:
            return None
        return Adapters(pipe, model=reference, max_entries=s.max_cached_loras,
                        max_bytes=s.lora_cache_bytes, hotswap=s.compile,
                        max_rank=s.lora_max_rank,
                        resolve=lambda ref: resolve_lora(
                            ref, model_cache=s.model_cache,
                            s3_client_factory=self._s3_client_factory))

    def _unload(self, key: tuple[str, str], loaded: LoadedModel) -> None:
        log.info("unloading model %s (%s)", *key)
        del loaded.pipeline
        release_device_memory(self.device)

    def _memory_in_use(self) -> int | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.memory_allocated(self.device)

    # -- generation -----------------------------------------------------------------

    def generate(self, key: BatchKey, items: list[GenerationItem],
                 on_step: StepHook | None = None) -> GenerationResult:
        """Run one batch; on out-of-memory split it, then try ``lean`` once at size 1.

        ``on_step`` runs after every denoising step; returning True stops the batch
        there and raises GenerationInterrupted (used by a shutdown with a deadline).
        An exception that ends the call carries its ``batch_stats`` (splits, fallbacks).
        """
        call = _Call(BatchStats(), on_step)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            images = self._generate(call, key, items, self.mode)
        except Exception as exc:
            exc.batch_stats = call.stats  # type: ignore[attr-defined]  # what it tried
            raise
        finally:
            if self.device.type == "cuda":
                call.stats.peak_memory_bytes = torch.cuda.max_memory_allocated(self.device)
        return GenerationResult(images=images, stats=call.stats)

    def _generate(self, call: _Call, key: BatchKey, items: list[GenerationItem],
                  mode: str) -> list[Image.Image]:
        try:
            return self._call_pipeline(call, self._model_for(call, key.model, mode), key,
                                       items)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            release_device_memory(self.device)
        if len(items) > 1:
            half = len(items) // 2
            call.stats.oom_splits += 1
            log.warning("out of memory at batch size %d; splitting", len(items))
            return self._generate(call, key, items[:half], mode) + self._generate(
                call, key, items[half:], mode)
        if mode != "lean":
            log.warning("out of memory at batch size 1 in %s mode; retrying in lean mode",
                        mode)
            call.stats.lean_fallbacks += 1
            self.cache.evict((key.model, mode))
            release_device_memory(self.device)
            try:
                return self._call_pipeline(call, self._model_for(call, key.model, "lean"),
                                           key, items)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
        raise GenerationFailed(
            f"out of memory even at batch size 1 in lean mode ({key.width}x{key.height}, "
            f"model {key.model})")

    def _model_for(self, call: _Call, reference: str, mode: str) -> LoadedModel:
        """The warm model; a load it causes is counted in this call's stats."""
        loads = self.cache.loads
        loaded = self.model(reference, mode)
        if self.cache.loads > loads:
            call.stats.model_load_seconds += loaded.load_seconds
        return loaded

    def _call_pipeline(self, call: _Call, loaded: LoadedModel, key: BatchKey,
                       items: list[GenerationItem]) -> list[Image.Image]:
        pipe = loaded.pipeline
        if loaded.adapters is not None:
            loaded.adapters.activate(key.loras)
        elif key.loras:
            raise LoraNotAllowed("LoRAs are not admitted here: IMG2IMG_ALLOWED_LORAS is empty")
        pipe.scheduler = self._scheduler(loaded, key.scheduler)
        set_vae_tiling_for(pipe, loaded.mode, key.width, key.height)
        negative = [item.negative_prompt for item in items]
        # CPU generators: the same seed gives the same noise on any device.
        generators = [torch.Generator("cpu").manual_seed(item.seed) for item in items]
        call.stats.pipeline_calls += 1
        interrupted = False

        def step_end(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
            nonlocal interrupted
            if call.on_step is not None and call.on_step():
                interrupted = True
                pipeline._interrupt = True  # diffusers skips the remaining steps
            return tensors

        # SD3 and Flux default to their own working size unless told the image's.
        sizes = {"height": key.height, "width": key.width} if loaded.sized_call else {}
        result = pipe(
            prompt=[item.prompt for item in items],
            negative_prompt=negative if any(negative) else None,
            **sizes,
            image=to_device_batch([item.image for item in items], self.device),
            strength=key.strength,
            num_inference_steps=key.steps,
            guidance_scale=key.guidance_scale,
            generator=generators,
            output_type="pt",  # uint8 conversion on the device: worker/engine/pixels.py
            callback_on_step_end=step_end,
        )
        if interrupted:
            raise GenerationInterrupted(f"batch of {len(items)} stopped before its last step")
        return from_device_batch(result.images)

    def _scheduler(self, loaded: LoadedModel, name: str) -> Any:
        if name not in loaded.schedulers:
            base = loaded.schedulers.setdefault("model", loaded.pipeline.scheduler)
            loaded.schedulers[name] = make_scheduler(name, base)
        return loaded.schedulers[name]

    def warm_up(self, models: list[str], sizes: list[tuple[int, int]],
                on_step: StepHook | None = None) -> float:
        """Load each model and run one full-size batch per shape (compiles if enabled).

        Uses the default job parameters, so the compiled graphs match real batches.
        """
        started = time.perf_counter()
        for model in models:
            defaults, _ = self.apply_profile(GenerationParams(model=model, prompt=""))
            for width, height in sizes:
                image = Image.new("RGB", (width, height), (127, 127, 127))
                key = BatchKey(model=model, width=width, height=height, steps=defaults.steps,
                               strength=defaults.strength,
                               guidance_scale=defaults.guidance_scale,
                               scheduler=defaults.scheduler)
                items = [GenerationItem(image, "warm-up", "", 0)] * self.settings.max_batch_size
                self.generate(key, items, on_step=on_step)
        seconds = time.perf_counter() - started
        log.info("warm-up of %d model(s) x %d shape(s) took %.1f s", len(models), len(sizes),
                 seconds)
        return seconds

    def close(self) -> None:
        self.cache.clear()


def pipeline_class(profile: ModelProfile) -> Any:
    """The family's diffusers img2img pipeline class; ModelNotSupported when this
    diffusers has none."""
    import diffusers

    try:
        return getattr(diffusers, profile.pipeline)
    except AttributeError:
        raise ModelNotSupported(
            f"{profile.title} needs {profile.pipeline}, which diffusers "
            f"{diffusers.__version__} does not have") from None


def load_pipeline(source: ModelSource, dtype: torch.dtype, profile: ModelProfile) -> Any:
    """Load with the family's img2img pipeline class: safetensors only, never remote
    code."""
    pipeline = pipeline_class(profile)

    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True}
    variants = [dict(kwargs, variant="fp16"), kwargs] if (
        not source.is_local and dtype == torch.float16) else [kwargs]
    # The cache first (a hub model is usually there: baked in, or downloaded before);
    # the hub only when it is not, and only when the hub can be reached at all, so a
    # missing model fails in a second rather than after the hub client's retries.
    attempts = [dict(v, local_files_only=True) for v in variants]
    if not source.is_local and hub_reachable():
        attempts += variants
    last_error: Exception | None = None
    for attempt in attempts:
        try:
            pipe = pipeline.from_pretrained(source.location, **attempt)
            pipe.set_progress_bar_config(disable=True)
            return pipe
        except (OSError, ValueError) as exc:
            last_error = exc
    if not source.is_local and not hub_reachable():
        raise ModelNotFound(f"model {source.reference!r} is not in the Hugging Face cache "
                            f"(HF_HOME) and {_hub_host()} cannot be reached") from last_error
    if last_error is not None and _is_network_error(last_error):
        raise StorageUnavailable(f"model {source.reference!r}: {last_error}") from last_error
    raise ModelNotFound(f"model {source.reference!r} ({profile.title}) could not be loaded "
                        f"from {source.location}: {last_error}") from last_error


def _hub_host() -> str:
    import os
    from urllib.parse import urlsplit

    return urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""


def hub_reachable() -> bool:
    """False when downloads are off (HF_HUB_OFFLINE) or the hub's name does not resolve."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.getaddrinfo(_hub_host(), 443)
    except OSError:
        return False
    return True


def _is_network_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("timeout", "timed out", "connection", "503", "502"))
