"""The result record: the system of record for a job's outcome.

Stored as JSON next to the output (``<output key>.json``) by the fleet worker and as
one line of ``results.jsonl`` by the local folder mode.

While a fleet worker runs a job, the record says ``running`` (the job's claim): it names
the worker, the SQS message and how long the claim holds, so a duplicate delivery of
the same job waits for the outcome instead of running the job a second time.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.errors import error_type
from contract.job import SCHEMA_VERSION
from contract.loras import LoraRef

Status = Literal["running", "done", "failed", "cancelled", "expired"]
FINAL_STATUSES = ("done", "failed", "cancelled", "expired")
# Ended without running and without an output: cancelled by a person, or received after
# its expires_at. Their ``error`` says why.
NOT_RUN_STATUSES = ("cancelled", "expired")


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> ErrorInfo:
        return cls(type=error_type(exc), message=str(exc) or error_type(exc))


class ResultRecord(BaseModel):
    model_config = ConfigDict(frozen=True, protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    job_id: str
    batch_id: str | None = None
    status: Status
    input: str
    output: str | None = None
    error: ErrorInfo | None = None
    model: str | None = None
    loras: tuple[LoraRef, ...] = ()  # the adapters the job ran (or was to run) with
    prompt: str | None = None
    seed: int | None = None
    seconds: float = 0.0
    timings: dict[str, float] = Field(default_factory=dict)
    worker: str | None = None
    finished_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    # What the job cost: its share of its batch's engine seconds, and that at the
    # fleet's IMG2IMG_GPU_PRICE_PER_HOUR (when set).
    gpu_seconds: float | None = None
    cost_usd: float | None = None
    # On a running record (a claim): until when it holds. On running and final records:
    # the SQS message it was for (the same message coming back is the same delivery).
    claimed_until: datetime | None = None
    message_id: str | None = None
    # The model's family and what the job ran with, its unset parameters filled in from
    # the family's defaults (steps, strength, guidance_scale, scheduler, max_side).
    family: str | None = None
    generation: dict[str, int | float | str] | None = None

    @model_validator(mode="after")
    def _status_matches_fields(self) -> ResultRecord:
        if self.status == "done" and (self.output is None or self.error is not None):
            raise ValueError("a done record needs an output and no error")
        if self.status == "failed" and (self.error is None or self.output is not None):
            raise ValueError("a failed record needs an error and no output")
        if self.status == "running" and (self.claimed_until is None or self.error
                                         is not None or self.output is not None):
            raise ValueError("a running record needs claimed_until and no output or error")
        if self.status in NOT_RUN_STATUSES and (self.output is not None or self.error is None):
            raise ValueError(f"a {self.status} record needs a reason (error) and no output")
        return self

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_json(self) -> str:
        return self.model_dump_json()
