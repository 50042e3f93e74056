"""A batch's progress from its manifest and markers, and its failures from result records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError

from contract.batches import BatchCounts
from contract.locations import (
    RESULT_SUFFIX,
    S3Location,
    batch_counter_key,
    batch_prefix,
    marker_jobs,
)
from contract.result import ResultRecord
from producer.listing import MAX_KEYS_PER_LIST, iter_objects
from producer.manifest import BatchManifest, read_manifest

DONE, FAILED, CANCELLED, EXPIRED = "done", "failed", "cancelled", "expired"
FINAL = (DONE, FAILED, CANCELLED, EXPIRED)


@dataclass
class BatchProgress:
    batch_id: str
    manifest: BatchManifest | None
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    first_marker_at: datetime | None = None
    last_marker_at: datetime | None = None
    failed_job_ids: list[str] = field(default_factory=list)
    costs: BatchCounts | None = None  # the workers' running totals (gpu seconds, $)

    @property
    def total(self) -> int | None:
        return self.manifest.total if self.manifest else None

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled + self.expired

    @property
    def complete(self) -> bool:
        return self.total is not None and self.finished >= self.total

    @property
    def started_at(self) -> datetime | None:
        """Since when the batch has been running: the manifest's creation, else the
        first marker (a batch enqueued by another producer has no manifest)."""
        return self.manifest.created_at if self.manifest else self.first_marker_at

    @property
    def finished_at(self) -> datetime | None:
        """When a complete batch's last job ended (its last marker); None until then."""
        return self.last_marker_at if self.complete else None

    def rate(self, now: datetime) -> float | None:
        """Finished jobs per second from the start to now, or to the batch's end once it
        is complete (a finished batch's rate stays what it was); None before a job ends."""
        if self.started_at is None or not self.finished:
            return None
        if self.finished_at is not None:  # S3 times are whole seconds: the end's second
            elapsed = (self.finished_at - self.started_at).total_seconds() + 1
        else:
            elapsed = (now - self.started_at).total_seconds()
        return self.finished / elapsed if elapsed > 0 else None

    def eta_seconds(self, now: datetime) -> float | None:
        if self.complete:
            return 0.0
        rate = self.rate(now)
        if self.total is None or rate is None:
            return None
        return max(self.total - self.finished, 0) / rate

    @property
    def exists(self) -> bool:
        """False when neither a manifest nor a marker is there: an unknown batch id."""
        return self.manifest is not None or self.finished > 0

    def line(self, now: datetime) -> str:
        """One line for people: counts, rate, and the ETA or 'finished'."""
        total = "unknown (no manifest)" if self.total is None else str(self.total)
        rate = self.rate(now)
        state = "finished" if self.complete else f"eta {format_seconds(self.eta_seconds(now))}"
        not_run = "".join(f", {name} {getattr(self, name)}"
                          for name in (CANCELLED, EXPIRED) if getattr(self, name))
        costs = self.costs
        cost = "" if costs is None or not costs.gpu_seconds else (
            f", gpu {costs.gpu_seconds:.1f} s"
            + (f" (${costs.cost_usd:.4f})" if costs.cost_usd is not None else ""))
        return (f"batch {self.batch_id}: done {self.done}, failed {self.failed}{not_run}, "
                f"total {total}, rate {'unknown' if rate is None else f'{rate:.2f} jobs/s'}"
                f"{cost}, {state}")

    def to_dict(self, now: datetime) -> dict[str, Any]:
        """The same facts for programs (``status --json``); unknowns are null."""
        rate = self.rate(now)
        eta = self.eta_seconds(now)
        return {
            "batch_id": self.batch_id, "total": self.total, "done": self.done,
            "failed": self.failed, "cancelled": self.cancelled, "expired": self.expired,
            "finished": self.finished, "complete": self.complete,
            "gpu_seconds": self.costs.gpu_seconds if self.costs else None,
            "cost_usd": self.costs.cost_usd if self.costs else None,
            "rate_jobs_per_second": None if rate is None else round(rate, 4),
            "eta_seconds": None if eta is None else round(eta, 1),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "has_manifest": self.manifest is not None,
            "source": self.manifest.source if self.manifest else None,
            "models": self.manifest.models if self.manifest else None,
            "prompts": self.manifest.prompts if self.manifest else None,
            "output": self.manifest.output if self.manifest else None,
        }


def batch_progress(s3: Any, output: S3Location, batch_id: str, *,
                   page_size: int = MAX_KEYS_PER_LIST) -> BatchProgress:
    """Count the batch's markers, one LIST per ``page_size`` of them."""
    progress = BatchProgress(batch_id=batch_id, manifest=read_manifest(s3, output, batch_id))
    statuses: dict[str, str] = {}  # a job marked twice (a redelivery) counts once
    for obj in iter_objects(s3, output.bucket, batch_prefix(output.key, batch_id), page_size,
                            delimiter="/"):
        job_ids, status = marker_jobs(obj["Key"])
        if status not in FINAL:
            continue  # the manifest, the cancel order
        for job_id in job_ids:
            if statuses.get(job_id) != DONE:
                statuses[job_id] = status
        modified = obj["LastModified"]
        if progress.first_marker_at is None or modified < progress.first_marker_at:
            progress.first_marker_at = modified
        if progress.last_marker_at is None or modified > progress.last_marker_at:
            progress.last_marker_at = modified
    for job_id, status in statuses.items():
        setattr(progress, status, getattr(progress, status) + 1)
        if status == FAILED:
            progress.failed_job_ids.append(job_id)
    progress.costs = batch_costs(s3, output, batch_id, progress.manifest)
    return progress


def batch_costs(s3: Any, output: S3Location, batch_id: str,
                manifest: BatchManifest | None) -> BatchCounts | None:
    """The workers' totals (one GET per counter shard that expects jobs), or None for a
    batch whose manifest predates the counters."""
    if manifest is None or manifest.shard_totals is None:
        return None
    total = BatchCounts()
    for shard, expected in enumerate(manifest.shard_totals):
        if not expected:
            continue
        try:
            body = s3.get_object(Bucket=output.bucket, Key=batch_counter_key(
                output.key, batch_id, shard))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                continue  # no job of that shard ended yet
            raise
        total = total + BatchCounts.model_validate_json(body)
    return total


def failed_records(s3: Any, output: S3Location, job_ids: list[str]) -> list[ResultRecord]:
    """The failed result records of these jobs.

    Output keys are ``<stem>.<job_id[:12]>.<ext>`` and records ``<output key>.json``, so
    one listing of the output folder finds them without reading any other record.
    """
    wanted = {job_id[:12]: job_id for job_id in job_ids}
    records: list[ResultRecord] = []
    for obj in iter_objects(s3, output.bucket, output.key):
        key = obj["Key"]
        if not key.endswith(RESULT_SUFFIX) or "/" in key[len(output.key):]:
            continue
        parts = key[: -len(RESULT_SUFFIX)].rsplit(".", 2)
        if len(parts) != 3 or parts[1] not in wanted:
            continue
        try:
            body = s3.get_object(Bucket=output.bucket, Key=key)["Body"].read()
            record = ResultRecord.model_validate(json.loads(body))
        except (ClientError, ValueError):
            continue
        if record.job_id == wanted[parts[1]] and record.status == FAILED:
            records.append(record)
    return records


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
