"""What a batch is beyond its jobs: its manifest, its running totals, and its cancel
order. Producers write the manifest and cancel orders; workers keep the totals.

All of it lives under ``<output dir>/_batches/<batch_id>/`` (contract.locations).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.locations import counter_shard, counter_shards_for

FinalStatus = Literal["done", "failed", "cancelled", "expired"]
MANIFEST_NAMES_KEPT = 5  # models and prompts named in a manifest


class BatchManifest(BaseModel):
    """Written by ``enqueue`` at ``<output dir>/_batches/<batch_id>/manifest.json``."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    total: int  # jobs on the queue for this batch
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    queue_url: str
    source: str
    output: str  # the output prefix, s3://bucket/prefix/
    not_enqueued: int = 0  # jobs whose send failed (not counted in total)
    # Jobs per counter shard (contract.locations.counter_shard over as many shards as
    # the list is long: 16 from older producers, fewer for small batches now): lets
    # workers tell when the batch is complete. Absent in manifests of older producers:
    # no batch.complete.
    shard_totals: list[int] | None = None
    # The models and prompts its jobs use (the first few, in order), for listings.
    # Absent in manifests of older producers.
    models: list[str] | None = None
    prompts: list[str] | None = None

    @staticmethod
    def first_distinct(values: Iterable[str], limit: int = MANIFEST_NAMES_KEPT) -> list[str]:
        return list(dict.fromkeys(values))[:limit]

    @staticmethod
    def shard_totals_of(job_ids: Iterable[str]) -> list[int]:
        ids = list(job_ids)
        totals = [0] * counter_shards_for(len(ids))
        for job_id in ids:
            totals[counter_shard(job_id, len(totals))] += 1
        return totals


class BatchCounts(BaseModel):
    """A batch's totals so far (one counter shard, or all of them summed)."""

    ended: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    gpu_seconds: float = 0.0
    # None until a job with a cost ended (workers without IMG2IMG_GPU_PRICE_PER_HOUR
    # record none): "no price", not "free".
    cost_usd: float | None = None

    def add(self, status: FinalStatus, gpu_seconds: float,
            cost_usd: float | None) -> BatchCounts:
        values = self.model_dump()
        values["ended"] += 1
        values[status] += 1
        values["gpu_seconds"] = round(values["gpu_seconds"] + gpu_seconds, 6)
        values["cost_usd"] = _plus(values["cost_usd"], cost_usd)
        return BatchCounts(**values)

    def __add__(self, other: BatchCounts) -> BatchCounts:
        mine, theirs = self.model_dump(), other.model_dump()
        summed = {k: mine[k] + theirs[k] for k in mine if k != "cost_usd"}
        return BatchCounts(**summed, cost_usd=_plus(self.cost_usd, other.cost_usd))


def _plus(total: float | None, cost: float | None) -> float | None:
    """A sum of costs where None is "not priced" (None + None stays None)."""
    if cost is None:
        return total
    return round((total or 0.0) + cost, 8)


class CancelOrder(BaseModel):
    """``cancel.json``: the whole batch, or some of its jobs, are cancelled."""

    all_jobs: bool = False
    job_ids: list[str] = Field(default_factory=list)
    reason: str = "cancelled"
    updated_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    def covers(self, job_id: str) -> bool:
        return self.all_jobs or job_id in self.job_ids
