"""In-process pipeline fixtures, after dramatiq's stub broker and worker: a stub engine,
a stub source, and pipelines over them that are always shut down."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.stub_engine import StubEngine
from tests.support.stub_source import StubSource
from worker.job_pipeline import JobPipeline
from worker.jobs import Job


@pytest.fixture
def stub_engine() -> StubEngine:
    return StubEngine()


@pytest.fixture
def stub_source() -> StubSource:
    return StubSource()


@pytest.fixture
def stub_pipeline(stub_engine: StubEngine, stub_source: StubSource
                  ) -> Iterator[Callable[..., JobPipeline[Job]]]:
    """``stub_pipeline(**options)``: a pipeline over the stubs (batch 4, prefetch 8);
    ``engine=`` and ``source=`` put others in their place."""
    made: list[JobPipeline[Job]] = []

    def make(*, engine: StubEngine | None = None, source: StubSource | None = None,
             **options: Any) -> JobPipeline[Job]:
        options = {"max_batch_size": 4, "io_threads": 4, "prefetch_jobs": 8,
                   "beat_every": 0.2, **options}
        pipeline = JobPipeline(engine or stub_engine, source or stub_source,  # type: ignore[arg-type]
                               **options)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.abort()
        pipeline.shutdown()


def run_in_thread(pipeline: JobPipeline[Job], until: Callable[[], bool]) -> threading.Thread:
    """The engine loop on its own thread (the test thread submits and stops)."""
    thread = threading.Thread(target=pipeline.run, kwargs={"until": until}, daemon=True)
    thread.start()
    return thread
