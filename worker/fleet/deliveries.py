"""The fleet source's books: what a received message became, a delivery's jobs still
open, and the worker's counts of outcomes (its one-line summary)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from worker.fleet.fleet_jobs import FleetJob


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    released: int = 0
    duplicates: int = 0
    poison: int = 0
    skipped: int = 0

    def line(self, worker_id: str, seconds: float) -> str:
        rare = "".join(f", {name} {getattr(self, name)}"
                       for name in ("cancelled", "expired", "skipped") if getattr(self, name))
        return (f"worker {worker_id}: done {self.done}, failed {self.failed}, released "
                f"{self.released}, already done {self.duplicates}, not jobs {self.poison}"
                f"{rare} in {seconds:.1f} s")


@dataclass
class OpenJobs:
    """A delivery's jobs that have not ended yet, and the retries they asked for."""

    jobs: int
    retries: list[int | None] = field(default_factory=list)


@dataclass
class Intake:
    """What a received message became: jobs for the pipeline, and I/O chores (records
    of invalid jobs) to run beside them."""

    jobs: list[FleetJob] = field(default_factory=list)
    chores: list[Callable[[], None]] = field(default_factory=list)
