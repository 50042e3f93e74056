"""The job pipeline: prepare -> batch -> generate -> write, whatever the jobs' source.

A ``JobSource`` (the SQS fleet, a local folder) says how to prepare a job's input, how
to write its output, what a failure becomes, and what to do once a job ended. The
pipeline runs the rest: I/O threads prepare and write while the engine, on the
caller's thread, runs one batch at a time, so the GPU never waits for storage.

Every path from ``submit`` to the job's end is total: whatever a source or the engine
raises becomes the job's failure outcome, and a source that cannot even record that
is told the job was ``lost`` (the fleet releases its message toward the DLQ).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from PIL import Image

from contract.errors import Img2ImgError, Interrupted, Timeout
from worker.batching import BatchKey, group_batches
from worker.engine.engine import BatchStats, Engine
from worker.jobs import Job, Outcome, Readiness

log = logging.getLogger(__name__)

J = TypeVar("J", bound=Job)

# How long the engine waits for a partial batch to fill while jobs are still arriving.
BATCH_FILL_WAIT_SECONDS = 0.25


class JobSource(ABC, Generic[J]):
    """Where jobs come from and where they end. A source implements the four steps of a
    job (``prepare``, ``write``, ``failure``, ``ended``); the other hooks have defaults
    that suit a source which holds nothing back (a folder).

    The pipeline calls the source; the source never calls the pipeline.
    """

    @abstractmethod
    def prepare(self, job: J) -> Readiness | Outcome:
        """Fetch and decode the input (``job.prepared``), or end the job now, or
        (``Readiness.DEFERRED``) keep it aside: it then counts in ``holding`` until
        the source's owner submits it again."""

    @abstractmethod
    def write(self, job: J, image: Image.Image) -> Outcome:
        """Store the output and its record."""

    @abstractmethod
    def failure(self, job: J, error: BaseException) -> Outcome:
        """What ``error`` makes of the job (a failed record, or a retry)."""

    @abstractmethod
    def ended(self, job: J, outcome: Outcome) -> None:
        """The job is over for this run: count, log, settle."""

    def lost(self, job: J, error: BaseException) -> None:
        """Even ``failure``/``ended`` raised: give the job back some other way."""
        log.error("job %s was lost: %r", job.job_id, error)

    def holding(self) -> int:
        """Jobs the source keeps aside (deferred); they count against the prefetch."""
        return 0

    def wanted(self, job: J) -> bool:
        """Whether a prepared job may still be batched (not released meanwhile)."""
        return True

    def dropped(self, job: J) -> None:
        """A prepared job that is no longer wanted was let go."""

    def refused(self, job: J) -> Exception | None:
        """Why a prepared job must not run after all (cancelled meanwhile); no I/O."""
        return None

    def batch_started(self, jobs: list[J]) -> None:
        """These jobs reached the engine."""

    def batch_ran(self, key: BatchKey, jobs: list[J], seconds: float,
                  stats: BatchStats | None) -> None:
        """One pipeline call ended (stats is None when it raised without any)."""


class JobPipeline(Generic[J]):
    def __init__(self, engine: Engine, source: JobSource[J], *, max_batch_size: int,
                 io_threads: int, prefetch_jobs: int, same_batches_every_run: bool = False,
                 beat: Callable[[], None] = lambda: None, beat_every: float = 5.0) -> None:
        """``same_batches_every_run``: batches are formed from consecutive windows of
        ``prefetch_jobs`` submitted jobs, each complete before it runs, so the same jobs
        always run in the same batches (an output is reproducible bit for bit only at the
        same batch size). Otherwise a batch takes what is ready, after a short wait to
        fill (the fleet: jobs arrive as they come)."""
        self.engine = engine
        self.source = source
        self.max_batch_size = max_batch_size
        self.prefetch_jobs = prefetch_jobs
        self._beat = beat  # the engine loop's liveness, at least every beat_every seconds
        self._beat_every = beat_every
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="io")
        self._cond = threading.Condition()
        self._ready: list[J] = []
        self._preparing = 0
        self._windows = same_batches_every_run
        self._sequence_of: dict[int, int] = {}  # id(job) -> submission order, when windowed
        self._submitted = 0
        self._unprepared: dict[int, int] = {}  # window -> jobs still being prepared
        self._current_window = 0
        self._writing = 0
        self._deadline: float | None = None  # stopping: batches must end before this
        self._aborting = False
        self._closed = False
        self._seconds_per_image: dict[BatchKey, float] = {}

    # -- feeding ------------------------------------------------------------------------

    def capacity(self) -> int:
        """How many more jobs to take: ready, preparing and the source's deferred jobs
        count against the prefetch (about ``prefetch_batches`` full batches waiting for
        the engine)."""
        with self._cond:
            return max(0, self.prefetch_jobs - self._pending())

    def _pending(self) -> int:
        return len(self._ready) + self._preparing + self.source.holding()

    def wait_for_capacity(self, give_up: Callable[[], bool], timeout: float = 5.0) -> int:
        """Block until there is room (or ``give_up()``); return the room."""
        with self._cond:
            self._cond.wait_for(lambda: give_up() or self._pending() < self.prefetch_jobs,
                                timeout=timeout)
            return max(0, self.prefetch_jobs - self._pending())

    def submit(self, job: J) -> None:
        """Prepare ``job`` in an I/O thread; ready jobs wait for the engine."""
        with self._cond:
            self._preparing += 1
            if self._windows:
                window = self._submitted // self.prefetch_jobs
                self._sequence_of[id(job)] = self._submitted
                self._submitted += 1
                self._unprepared[window] = self._unprepared.get(window, 0) + 1
        self._io.submit(self._prepare, job)

    def run_io(self, fn: Callable[[], None]) -> None:
        """Other I/O work beside the jobs' (recording an invalid message, the life
        cycle's periodic reads) in the same threads; guarded. After ``shutdown`` it is
        dropped: nothing is held any more that it could settle."""
        def task() -> None:
            try:
                fn()
            except Exception:  # noqa: BLE001 - logged; the caller decides what is lost
                log.exception("I/O task %s failed", getattr(fn, "__name__", fn))
            finally:
                self.wake()
        with self._cond:
            if self._closed:
                return
            self._io.submit(task)

    def _prepare(self, job: J) -> None:
        def step() -> Readiness | Outcome:
            job.apply_profile(self.engine)  # the model family's defaults, before sizing
            return self.source.prepare(job)
        self._step(job, step, self._prepared)

    def _prepared(self, job: J) -> None:
        """Bookkeeping once a preparation ended, whatever its result (lock held)."""
        self._preparing -= 1
        if self._windows:
            self._unprepared[self._window(job)] -= 1

    def _step(self, job: J, step: Callable[[], Readiness | Outcome],
              finished: Callable[[J], None]) -> None:
        """Run one I/O step of a job: every exception becomes the job's failure; what
        cannot even be recorded is ``lost``; ``finished`` runs last, under the lock."""
        try:
            try:
                result = step()
            except Exception as exc:  # noqa: BLE001 - every failure is an outcome
                if isinstance(exc, Img2ImgError):  # named and expected: one line, no trace
                    log.warning("job %s failed: %s", job.job_id, exc)
                result = self.source.failure(job, exc)
            if isinstance(result, Outcome):
                self.source.ended(job, result)
            elif result is Readiness.DEFERRED:
                pass  # the source holds it (``holding``) until it is submitted again
            elif self.source.wanted(job):
                with self._cond:
                    self._ready.append(job)
            else:
                self.source.dropped(job)
        except Exception as exc:  # noqa: BLE001
            log.exception("job %s could not be handled or recorded", job.job_id)
            self.source.lost(job, exc)
        finally:
            with self._cond:
                finished(job)
                self._cond.notify_all()

    def discard_ready(self, unwanted: Callable[[J], bool]) -> list[J]:
        """Take prepared jobs out before they reach the engine (released messages)."""
        with self._cond:
            gone = [job for job in self._ready if unwanted(job)]
            self._ready = [job for job in self._ready if not unwanted(job)]
            self._cond.notify_all()
        return gone

    # -- stopping -----------------------------------------------------------------------

    def stop(self, deadline: float | None) -> None:
        """Run what is ready only while batches fit before ``deadline`` (None: no limit);
        stop a running batch between steps once it is passed."""
        with self._cond:
            self._deadline = deadline
            self._cond.notify_all()

    def abort(self) -> None:
        """Stop the running batch at its next step and take no other."""
        with self._cond:
            self._aborting = True
            self._ready.clear()
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_for_change(self, timeout: float) -> None:
        """Block until something in the pipeline changes (or ``timeout``)."""
        with self._cond:
            self._cond.wait(timeout=timeout)

    @property
    def idle(self) -> bool:
        with self._cond:
            return not (self._pending() or self._writing)

    def drain(self) -> None:
        """Wait for preparations and writes in flight (quick: the images are computed)."""
        with self._cond:
            self._cond.wait_for(lambda: self._aborting or not (self._preparing
                                                               or self._writing))

    def shutdown(self) -> None:
        with self._cond:
            self._closed = True
        self._io.shutdown(wait=True, cancel_futures=True)

    # -- the engine ---------------------------------------------------------------------

    def run(self, until: Callable[[], bool]) -> None:
        """Run batches on this thread until nothing is ready and ``until()`` is true."""
        while (batch := self._next_batch(until)) is not None:
            self._run_batch(*batch)

    def _next_batch(self, until: Callable[[], bool]) -> tuple[BatchKey, list[J]] | None:
        with self._cond:
            while not (candidates := self._candidates()):
                if self._aborting or (not self._ready and until()):
                    return None
                self._cond.wait(timeout=self._beat_every)
                self._beat()
            if self._aborting:
                return None
            if not self._windows:
                # Give a partial batch a moment to fill while jobs are still prepared.
                fill_until = time.monotonic() + BATCH_FILL_WAIT_SECONDS
                self._cond.wait_for(lambda: len(self._ready) >= self.max_batch_size
                                    or not self._preparing or self._deadline is not None
                                    or time.monotonic() >= fill_until,
                                    timeout=BATCH_FILL_WAIT_SECONDS)
                candidates = self._ready
            key, jobs = group_batches(candidates, lambda j: j.batch_key,
                                      self.max_batch_size)[0]
            taken = {id(j) for j in jobs}
            self._ready = [j for j in self._ready if id(j) not in taken]
        refusals = {id(j): why for j in jobs if (why := self.source.refused(j)) is not None}
        for job in jobs:
            if id(job) in refusals:
                self._end_all([job], refusals[id(job)])
        jobs = [j for j in jobs if id(j) not in refusals]
        if not jobs:
            return self._next_batch(until)
        self.source.batch_started(jobs)
        return key, jobs

    def _window(self, job: J) -> int:
        return self._sequence_of[id(job)] // self.prefetch_jobs

    def _candidates(self) -> list[J]:
        """The ready jobs a batch may take now (lock held)."""
        if not self._windows:
            return self._ready
        while True:
            window = self._current_window
            if self._unprepared.get(window, 0):
                return []  # this window is not complete yet
            ready = sorted((j for j in self._ready if self._window(j) == window),
                           key=lambda j: self._sequence_of[id(j)])  # submission order
            if ready or window >= (self._submitted - 1) // self.prefetch_jobs:
                return ready
            self._current_window += 1  # this window is done: on to the next

    def _run_batch(self, key: BatchKey, jobs: list[J]) -> None:
        if not self._fits_deadline(key, len(jobs)):
            log.info("batch of %d would not finish before the stop deadline; releasing",
                     len(jobs))
            self._end_all(jobs, Interrupted("the worker is stopping; released for another"))
            return
        started = time.perf_counter()
        timeout_at = started + key.timeout_seconds if key.timeout_seconds else None

        def on_step() -> bool:
            return self._on_step() or (timeout_at is not None
                                       and time.perf_counter() > timeout_at)

        try:
            result = self.engine.generate(key, [j.generation_item() for j in jobs],
                                          on_step=on_step)
        except Exception as exc:  # noqa: BLE001 - the batch fails, the worker goes on
            seconds = time.perf_counter() - started
            if isinstance(exc, Interrupted) and timeout_at is not None \
                    and time.perf_counter() > timeout_at and not self._stopping():
                exc = Timeout(f"the generation ran over its {key.timeout_seconds} s timeout "
                              f"({seconds:.1f} s) and was stopped")
            elif isinstance(exc, Interrupted):
                pass  # stopping: the jobs go back
            elif isinstance(exc, Img2ImgError):  # named and expected: its record says why
                log.warning("batch of %d failed: %s", len(jobs), exc)
            else:
                log.exception("batch of %d failed: %r", len(jobs), exc)
            stats = getattr(exc, "batch_stats", None)
            if stats is None or stats.pipeline_calls:  # a model that never loaded costs none
                for job in jobs:
                    job.timings["inference"] = seconds / len(jobs)
            self.source.batch_ran(key, jobs, seconds, stats)
            self._end_all(jobs, exc)
            return
        seconds = time.perf_counter() - started
        self._seconds_per_image[key] = seconds / len(jobs)
        for job in jobs:
            job.timings["inference"] = seconds / len(jobs)
            job.timings["batch_size"] = len(jobs)
        self.source.batch_ran(key, jobs, seconds, result.stats)
        with self._cond:
            self._writing += len(jobs)
        for job, image in zip(jobs, result.images, strict=True):
            self._io.submit(self._write, job, image)

    def _fits_deadline(self, key: BatchKey, size: int) -> bool:
        if self._deadline is None:
            return True
        per_image = self._seconds_per_image.get(key)
        return per_image is None or time.monotonic() + per_image * size <= self._deadline

    def _on_step(self) -> bool:
        self._beat()
        return self._stopping()

    def _stopping(self) -> bool:
        return self._aborting or (self._deadline is not None
                                  and time.monotonic() > self._deadline)

    def _end_all(self, jobs: list[J], error: BaseException) -> None:
        """End jobs with ``error`` in the I/O threads (their records are S3 writes)."""
        with self._cond:
            self._writing += len(jobs)
        for job in jobs:
            self._io.submit(self._step, job, lambda: _raise(error), self._written)

    def _write(self, job: J, image: Image.Image) -> None:
        self._step(job, lambda: self.source.write(job, image), self._written)

    def _written(self, job: J) -> None:
        self._writing -= 1


def _raise(error: BaseException) -> Outcome:
    raise error
