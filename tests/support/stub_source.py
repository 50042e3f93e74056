"""A job source for in-process pipeline tests: jobs are plain ``worker.jobs.Job``s whose
input is made in memory; every hook call and outcome is recorded, and any step can be
told to wait, defer or raise."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from contract.job import GenerationParams
from worker.images import PreparedImage
from worker.job_pipeline import JobSource
from worker.jobs import Job, Outcome, Readiness, Status


def make_job(name: str, *, size: int = 64, steps: int = 4, model: str = "tiny",
             timeout_seconds: int | None = None) -> Job:
    """A job named ``name`` (also its prompt, so the engine's record names it)."""
    params = GenerationParams(model=model, prompt=name, steps=steps, strength=0.5,
                              max_side=max(64, size))
    return Job(job_id=name, params=params, source=f"mem:{name}",
               timeout_seconds=timeout_seconds)


@dataclass
class StubSource(JobSource[Job]):
    prepare_seconds: Callable[[Job], float] = lambda job: 0.0
    prepare_error: Callable[[Job], BaseException | None] = lambda job: None
    write_error: Callable[[Job], BaseException | None] = lambda job: None
    failure_error: Callable[[Job], BaseException | None] = lambda job: None
    defer: Callable[[Job], bool] = lambda job: False
    refuse: Callable[[Job], BaseException | None] = lambda job: None
    unwanted: set[str] = field(default_factory=set)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    lost_jobs: dict[str, BaseException] = field(default_factory=dict)
    dropped_jobs: list[str] = field(default_factory=list)
    held: list[Job] = field(default_factory=list)
    ended_event: threading.Condition = field(default_factory=threading.Condition)

    def prepare(self, job: Job) -> Readiness | Outcome:
        time.sleep(self.prepare_seconds(job))
        if (error := self.prepare_error(job)) is not None:
            raise error
        if self.defer(job) and job not in self.held:
            self.held.append(job)
            return Readiness.DEFERRED
        side = job.params.max_side
        job.prepared = PreparedImage(Image.new("RGB", (side, side), 90), (side, side))
        return Readiness.READY

    def write(self, job: Job, image: Image.Image) -> Outcome:
        if (error := self.write_error(job)) is not None:
            raise error
        return Outcome(Status.DONE, record=job.done_record(f"mem:{job.job_id}.png", "stub"))

    def failure(self, job: Job, error: BaseException) -> Outcome:
        if (raised := self.failure_error(job)) is not None:
            raise raised
        return Outcome(Status.FAILED, record=job.failed_record(error, "stub"))

    def ended(self, job: Job, outcome: Outcome) -> None:
        with self.ended_event:
            self.outcomes[job.job_id] = outcome
            self.ended_event.notify_all()

    def lost(self, job: Job, error: BaseException) -> None:
        with self.ended_event:
            self.lost_jobs[job.job_id] = error
            self.ended_event.notify_all()

    def holding(self) -> int:
        return len(self.held)

    def wanted(self, job: Job) -> bool:
        return job.job_id not in self.unwanted

    def dropped(self, job: Job) -> None:
        with self.ended_event:
            self.dropped_jobs.append(job.job_id)
            self.ended_event.notify_all()

    def refused(self, job: Job) -> BaseException | None:
        return self.refuse(job)

    def release_held(self) -> list[Job]:
        """Stop deferring: the held jobs, to be submitted again."""
        held, self.held = self.held, []
        self.defer = lambda job: False
        return held

    def settled(self) -> int:
        return len(self.outcomes) + len(self.lost_jobs) + len(self.dropped_jobs)

    def wait_settled(self, count: int, timeout: float = 10.0) -> None:
        with self.ended_event:
            assert self.ended_event.wait_for(lambda: self.settled() >= count, timeout), (
                f"{self.settled()} of {count} jobs settled: {self.outcomes}")
