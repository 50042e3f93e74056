"""The worker's CloudWatch metrics (embedded metric format lines on stdout): one line per
batch and one per job, every number the engine and the pipeline collect included."""

from __future__ import annotations

from common.logs import emit_metrics
from worker.batching import BatchKey
from worker.engine.engine import BatchStats
from worker.jobs import Job

SECONDS, BYTES, COUNT = "Seconds", "Bytes", "Count"


def emit_batch(key: BatchKey, size: int, seconds: float, stats: BatchStats | None) -> None:
    """BatchSize, InferenceSeconds, SecondsPerImage; with the engine's stats also the
    pipeline calls, out-of-memory splits, lean fallbacks, model load seconds and the
    GPU memory peak."""
    values: dict[str, float] = {"BatchSize": float(size), "InferenceSeconds": seconds,
                                "SecondsPerImage": seconds / max(1, size)}
    units = {"BatchSize": COUNT, "InferenceSeconds": SECONDS, "SecondsPerImage": SECONDS}
    if stats is not None:
        values.update(PipelineCalls=float(stats.pipeline_calls),
                      OomSplits=float(stats.oom_splits),
                      LeanFallbacks=float(stats.lean_fallbacks))
        units.update(PipelineCalls=COUNT, OomSplits=COUNT, LeanFallbacks=COUNT)
        if stats.model_load_seconds:
            values["ModelLoadSeconds"] = stats.model_load_seconds
            units["ModelLoadSeconds"] = SECONDS
        if stats.peak_memory_bytes is not None:
            values["GpuMemoryPeakBytes"] = float(stats.peak_memory_bytes)
            units["GpuMemoryPeakBytes"] = BYTES
    emit_metrics(values, {"Model": key.model}, units)


JOB_METRIC = {"done": "ImagesDone", "failed": "ImagesFailed", "cancelled": "ImagesCancelled",
              "expired": "ImagesExpired"}


def emit_job(job: Job, status: str) -> None:
    """ImagesDone (Failed, Cancelled, Expired), and the seconds of each stage the job went
    through."""
    values = {JOB_METRIC[status]: 1.0}
    values.update({f"{name.capitalize()}Seconds": value
                   for name, value in job.timings.items() if name != "batch_size"})
    emit_metrics(values, {"Model": job.params.model},
                 {name: SECONDS if name.endswith("Seconds") else COUNT for name in values})
