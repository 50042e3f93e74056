"""Worker configuration (``IMG2IMG_*``), validated when the worker starts."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from contract.job import GenerationParams, OutputFormat
from contract.model_names import HUB_ALIASES
from contract.settings import CommaList, CommonSettings, split_list
from worker.fleet.callback_policy import parse_networks, parse_patterns

MemoryMode = Literal["fast", "balanced", "lean"]
LeanOffload = Literal["sequential", "group"]
DTypeName = Literal["auto", "float16", "bfloat16", "float32"]
S3ClientName = Literal["direct", "botocore"]

# Built-in aliases; the default allow-list admits exactly these (tiny included).
BUILTIN_ALIASES = ["tiny", *HUB_ALIASES]
# SQS caps a message's visibility at 12 hours from its first receipt.
SQS_MAX_VISIBILITY_SECONDS = 12 * 60 * 60


def default_model_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "img2img-fleet" / "models"


class WorkerSettings(CommonSettings):
    # Engine
    allowed_models: CommaList = BUILTIN_ALIASES
    memory_mode: MemoryMode = "fast"
    # How ``lean`` offloads on a GPU: "sequential" is the original switch (accelerate
    # hooks, one weight at a time); "group" is diffusers' leaf-level group offloading
    # with a CUDA stream, which prefetches the next layer while this one computes.
    lean_offload: LeanOffload = "sequential"
    dtype: DTypeName = "auto"
    device: str = "auto"
    max_batch_size: int = Field(8, ge=1, le=64)
    model_cache: Path = Field(default_factory=default_model_cache)
    max_cached_models: int = Field(2, ge=1, le=16)
    compile: bool = False
    # LoRA adapters jobs may ask for (fnmatch patterns on the ref; empty: none), and how
    # many stay loaded on each warm model (least recently used dropped first). With any
    # admitted, QKV projections stay unfused so an adapter on to_q/to_k/to_v applies;
    # with IMG2IMG_COMPILE, adapters are hot-swapped into slots of rank LORA_MAX_RANK.
    allowed_loras: CommaList = []
    max_cached_loras: int = Field(16, ge=4, le=256)
    lora_cache_bytes: int = Field(2 * 1024**3, ge=1024**2)
    lora_max_rank: int = Field(64, ge=1, le=1024)
    # "WIDTHxHEIGHT" shapes run once per default model at start-up (torch.compile warm-up
    # and a warm model before the first job); empty: load lazily on the first job.
    warmup_shapes: CommaList = []
    max_input_pixels: int = Field(40_000_000, ge=64 * 64)
    # Pixels being decoded at once across I/O threads (about 3 bytes each, times the
    # copies a conversion makes): bounds memory when many large photos arrive together.
    decode_pixel_budget: int = Field(100_000_000, ge=64 * 64)
    size_bucket: int = Field(64, ge=8, le=512, multiple_of=8)

    # Fleet
    allowed_inputs: CommaList = []
    allowed_outputs: CommaList = []
    visibility_timeout: int = Field(120, ge=10, le=SQS_MAX_VISIBILITY_SECONDS)
    receive_wait_seconds: int = Field(20, ge=0, le=20)
    stop_deadline: float = Field(100.0, ge=0)
    release_backoff_seconds: int = Field(30, ge=0, le=SQS_MAX_VISIBILITY_SECONDS)
    io_threads: int = Field(16, ge=1, le=64)
    prefetch_batches: int = Field(2, ge=1, le=16)
    # How a job's object requests reach S3 (worker/fleet/object_clients.py): signed
    # directly over a keep-alive pool, or through botocore (as every other call is).
    s3_client: S3ClientName = "direct"
    worker_id: str | None = None
    health_file: Path = Path("/tmp/img2img-worker.health")
    health_max_age: float = Field(120.0, gt=0)

    # Job life cycle: where ends of jobs and batches are announced, what a GPU costs.
    events_topic_arn: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # URL patterns a job's callback_url must match, part by part (empty: no per-job
    # callbacks), and the private networks callbacks may reach (none by default): see
    # worker/fleet/callback_policy.py.
    allowed_callbacks: CommaList = []
    callback_private_networks: CommaList = []
    gpu_price_per_hour: float | None = Field(None, ge=0)
    # A batch's cancellation is looked up at most this often per batch (an S3 GET).
    cancel_check_seconds: float = Field(5.0, ge=0)

    # Defaults for jobs made from S3 ObjectCreated notifications.
    event_output_prefix: str = "outputs/"
    event_strength: float = Field(0.75, gt=0.0, le=1.0)
    # Unset: the model family's default (contract.model_profiles).
    event_steps: int | None = Field(None, ge=1, le=200)
    event_guidance_scale: float | None = Field(None, ge=0.0, le=30.0)
    event_max_side: int | None = Field(None, ge=64, le=2048, multiple_of=8)
    event_output_format: OutputFormat = OutputFormat.PNG

    @field_validator("warmup_shapes")
    @classmethod
    def _shapes(cls, value: list[str]) -> list[str]:
        for shape in value:
            try:
                width, height = (int(v) for v in shape.lower().split("x"))
            except ValueError:
                raise ValueError(f"shape {shape!r} is not WIDTHxHEIGHT, e.g. 512x512") from None
            if width % 8 or height % 8 or not (64 <= width <= 2048 and 64 <= height <= 2048):
                raise ValueError(f"shape {shape!r}: sides must be multiples of 8 in 64..2048")
        return value

    def warmup_sizes(self) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in s.lower().split("x")) for s in self.warmup_shapes]

    @field_validator("allowed_models", "allowed_loras", "allowed_inputs", "allowed_outputs",
                     "warmup_shapes", "allowed_callbacks", "callback_private_networks",
                     mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("allowed_inputs", "allowed_outputs")
    @classmethod
    def _s3_prefixes(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not v.startswith("s3://") or len(v) <= len("s3://")]
        if bad:
            raise ValueError(f"each entry must be an S3 URI prefix like s3://bucket/in/: {bad}")
        return value

    @field_validator("allowed_callbacks")
    @classmethod
    def _callback_patterns(cls, value: list[str]) -> list[str]:
        parse_patterns(value)  # raises naming the bad pattern
        return value

    @field_validator("callback_private_networks")
    @classmethod
    def _callback_networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", value):
            raise ValueError("use auto, cpu, cuda, cuda:N (a GPU index), mps or xpu")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError(f"must be an http(s) URL (got {value!r})")
        return value or None

    @model_validator(mode="after")
    def _event_defaults_valid(self) -> WorkerSettings:
        # Fail at start-up, not on the first notification.
        if self.event_steps is not None and int(self.event_steps * self.event_strength) < 1:
            raise ValueError(
                f"IMG2IMG_EVENT_STEPS * IMG2IMG_EVENT_STRENGTH must give at least one "
                f"denoising step (got {self.event_steps} * {self.event_strength})")
        return self

    def event_params(self, *, model: str, prompt: str) -> GenerationParams:
        return GenerationParams(
            model=model,
            prompt=prompt,
            strength=self.event_strength,
            steps=self.event_steps,
            guidance_scale=self.event_guidance_scale,
            max_side=self.event_max_side,
            output_format=self.event_output_format,
        )

    @property
    def heartbeat_interval(self) -> float:
        """Extend visibility at a third of the timeout: two misses still leave margin."""
        return max(1.0, self.visibility_timeout / 3)
