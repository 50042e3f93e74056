"""What a simulated run produced: times, latencies, GPU-hours and the scaling decisions."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from capacity_planner.autoscaling import Decision


def weighted_percentile(samples: Iterable[tuple[float, int]], q: float) -> float | None:
    """The ``q`` quantile (0..1) of values given as (value, how many), nearest rank."""
    ordered = sorted((v, n) for v, n in samples if n > 0)
    total = sum(n for _, n in ordered)
    if not total:
        return None
    rank = max(1, min(total, math.ceil(q * total)))
    seen = 0
    for value, count in ordered:
        seen += count
        if seen >= rank:
            return value
    return ordered[-1][0]


@dataclass(frozen=True)
class ColdStartTimes:
    """When the first task got going, seconds from the first job (None: never)."""

    start_decision: float | None
    instance_launched: float | None
    instance_ready: float | None
    task_running: float | None
    first_result: float | None


@dataclass(frozen=True)
class GpuHours:
    """Instance-hours billed, split: engine busy (completed batches), engine time lost
    to interruptions, start-up (launch -> worker taking jobs), tail (after the last
    result until terminated), warming the warm pool's replacements, and the rest
    (running, waiting for work)."""

    billed: float
    busy: float
    lost_to_interruptions: float
    startup: float
    tail: float
    warm_pool_refill: float = 0.0

    @property
    def idle(self) -> float:
        return self.billed - self.busy

    @property
    def waiting(self) -> float:
        return max(0.0, self.billed - self.busy - self.lost_to_interruptions - self.startup
                   - self.tail - self.warm_pool_refill)


@dataclass(frozen=True)
class SimulationResult:
    images: int
    completed: int
    drain_seconds: float | None
    latency_p50: float | None
    latency_p99: float | None
    latency_max: float | None
    cold_start: ColdStartTimes
    gpu_hours: GpuHours
    peak_tasks: int
    batches: int
    interruptions: int
    jobs_rerun: int
    decisions: tuple[Decision, ...]
    ended_at: float
    complete: bool

    @property
    def first_result_seconds(self) -> float | None:
        return self.cold_start.first_result

    def cost(self, price_per_hour: float | None) -> float | None:
        """Dollars for the instance-hours billed at ``price_per_hour`` (None: unknown)."""
        return None if price_per_hour is None else self.gpu_hours.billed * price_per_hour
