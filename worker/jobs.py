"""A job on its way through the worker, whatever its source (the fleet or a folder),
and what it can end as. Records are built here, once, for both."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from contract.errors import Cancelled, Expired
from contract.job import GenerationParams
from contract.model_profiles import ModelProfile
from contract.result import ErrorInfo, ResultRecord
from worker.batching import BatchKey, GenerationItem
from worker.images import PreparedImage


class ProfileSource(Protocol):
    def apply_profile(self, params: GenerationParams) -> tuple[GenerationParams, ModelProfile]:
        ...


@dataclass(eq=False)
class Job:
    job_id: str  # may be known only once the input is read (a local file's content)
    params: GenerationParams
    source: str  # the input, as records and logs name it (s3:// URI or a path)
    batch_id: str | None = None
    received_at: float = field(default_factory=time.monotonic)
    timeout_seconds: int | None = None
    prepared: PreparedImage | None = None
    timings: dict[str, float] = field(default_factory=dict)
    family: str | None = None  # the model's, once its profile filled in the defaults

    def apply_profile(self, engine: ProfileSource) -> None:
        """Fill the parameters the job left unset from its model's family (once)."""
        if self.family is None:
            self.params, profile = engine.apply_profile(self.params)
            self.family = profile.family

    @property
    def seed(self) -> int:
        return self.params.effective_seed(self.job_id)

    @property
    def batch_key(self) -> BatchKey:
        assert self.prepared is not None, "only prepared jobs are batched"
        return BatchKey.of(self.params, self.prepared.size, self.timeout_seconds)

    def generation_item(self) -> GenerationItem:
        assert self.prepared is not None
        return GenerationItem(self.prepared.image, self.params.prompt,
                              self.params.negative_prompt, self.seed)

    def seconds(self) -> float:
        return round(time.monotonic() - self.received_at, 4)

    @property
    def gpu_seconds(self) -> float | None:
        """Its share of its batch's engine time (None before it ran)."""
        inference = self.timings.get("inference")
        return round(inference, 4) if inference is not None else None

    def done_record(self, output: str, worker: str, *,
                    gpu_price_per_hour: float | None = None) -> ResultRecord:
        return ResultRecord(
            job_id=self.job_id, batch_id=self.batch_id, status="done", input=self.source,
            output=output, model=self.params.model, loras=self.params.loras,
            prompt=self.params.prompt,
            seed=self.seed, seconds=self.seconds(),
            timings={k: round(v, 4) for k, v in self.timings.items()}, worker=worker,
            **self._generation(), **self._cost(gpu_price_per_hour))

    def failed_record(self, error: BaseException, worker: str, *,
                      gpu_price_per_hour: float | None = None) -> ResultRecord:
        """The record of a job that ended without an output: ``cancelled`` or
        ``expired`` when that is why, else ``failed``."""
        status = ("cancelled" if isinstance(error, Cancelled)
                  else "expired" if isinstance(error, Expired) else "failed")
        return ResultRecord(
            job_id=self.job_id or "-", batch_id=self.batch_id, status=status,
            input=self.source, output=None, error=ErrorInfo.from_exception(error),
            model=self.params.model, loras=self.params.loras, prompt=self.params.prompt,
            seed=self.seed if self.job_id else None, seconds=self.seconds(), worker=worker,
            **self._generation(), **self._cost(gpu_price_per_hour))

    def _generation(self) -> dict[str, object]:
        """The family and the parameters it ran with, defaults filled in (once known)."""
        if self.family is None:
            return {}
        return {"family": self.family, "generation": self.params.model_dump(
            include={"steps", "strength", "guidance_scale", "scheduler", "max_side"})}

    def _cost(self, gpu_price_per_hour: float | None) -> dict[str, float | None]:
        gpu = self.gpu_seconds
        cost = (round(gpu * gpu_price_per_hour / 3600, 8)
                if gpu is not None and gpu_price_per_hour is not None else None)
        return {"gpu_seconds": gpu, "cost_usd": cost}


class Status(str, Enum):
    DONE = "done"  # output written, done record
    FAILED = "failed"  # permanent error, failed record
    CANCELLED = "cancelled"  # its batch (or it) was cancelled before it started
    EXPIRED = "expired"  # received after its expires_at
    DUPLICATE = "duplicate"  # another delivery of the same job ended it
    SKIPPED = "skipped"  # not a job to run (an S3 notification for our own output)
    RETRY = "retry"  # transient: hand the job back for a later attempt


@dataclass(frozen=True)
class Outcome:
    """How a job ended (or, for RETRY, why it goes back): the data every counter,
    metric, log line and queue settlement is derived from."""

    status: Status
    record: ResultRecord | None = None
    retry_after: int | None = None  # RETRY: seconds; None: back off by receive count
    reason: str = ""

    @classmethod
    def retry(cls, reason: str, retry_after: int | None = None) -> Outcome:
        return cls(Status.RETRY, retry_after=retry_after, reason=reason)


class Readiness(str, Enum):
    """What a source's ``prepare`` says when the job has not ended."""

    READY = "ready"  # input decoded: the job may be batched
    DEFERRED = "deferred"  # the source keeps the job aside; it is submitted again later
