"""The fleet worker: SQS in, engine, S3 out, nothing lost.

Threads: the receiver long-polls SQS and hands jobs to an I/O pool that checks,
downloads and decodes them; the main thread groups ready jobs into batches and runs
the engine; the I/O pool encodes and uploads while the next batch computes; a
heartbeat extends the visibility of everything held; deletes go out in batches.

Life cycle: the first SIGTERM/SIGINT stops receiving, releases every message not yet
started (visibility 0), lets the running batch finish only if it fits
IMG2IMG_STOP_DEADLINE (else stops it between steps and releases it) and exits 0. A
second signal releases everything at once and exits.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from common.aws_errors import is_configuration_error
from contract.errors import Img2ImgError, is_permanent
from contract.result import ResultRecord
from worker import job_io
from worker.batching import group_batches
from worker.engine import BatchKey, Engine, GenerationInterrupted, GenerationItem
from worker.health import HealthFile
from worker.heartbeat import Heartbeat
from worker.images import PixelBudget
from worker.job_io import Claim
from worker.logs import emit_metrics
from worker.messages import BadJob, decode_body
from worker.settings import WorkerSettings
from worker.sqs_queue import MAX_RECEIVE_MESSAGES, MAX_VISIBILITY_SECONDS, ReceivedMessage, SqsQueue
from worker.storage import S3Storage
from worker.task_protection import TaskProtection

log = logging.getLogger(__name__)

# How long the engine waits for a partial batch to fill while jobs are still arriving.
BATCH_FILL_WAIT_SECONDS = 0.25
DELETE_FLUSH_SECONDS = 0.05
# A failing DeleteMessageBatch is retried with a doubling pause, up to this.
DELETE_BACKOFF_MAX_SECONDS = 5.0
PROTECTION_CHECK_SECONDS = 0.5
# How often a delivery that waits on another delivery of the same job looks again.
WAIT_RECHECK_SECONDS = 2.0
# A claim (running record) holds this many visibility timeouts: long enough to cover a
# job's wait in the prefetch queue, short enough that a crashed worker's claim lapses.
CLAIM_LEASE_TIMEOUTS = 2


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    released: int = 0
    duplicates: int = 0
    poison: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self, worker_id: str) -> str:
        skipped = f", skipped {self.skipped}" if self.skipped else ""
        return (f"worker {worker_id}: done {self.done}, failed {self.failed}, released "
                f"{self.released}, already done {self.duplicates}, not jobs {self.poison}"
                f"{skipped} in {time.monotonic() - self.started:.1f} s")


@dataclass
class HeldMessage:
    """A received message and how many of its jobs are still open."""

    message: ReceivedMessage
    open_jobs: int
    retry: bool = False  # a job hit a transient error: release instead of delete
    started: bool = False  # a job reached the engine: not released on the first signal
    closed: bool = False  # deleted or released: its receipt must never be used again
    states: list[job_io.JobState] = field(default_factory=list)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    def __init__(self, settings: WorkerSettings, engine: Engine, queue: SqsQueue,
                 storage: S3Storage, *, protection: TaskProtection | None = None,
                 worker_id: str | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.queue = queue
        self.storage = storage
        self.protection = protection or TaskProtection(None)
        self.worker_id = worker_id or settings.worker_id or default_worker_id()
        self.health = HealthFile(settings.health_file)
        self.heartbeat = Heartbeat(queue, settings.visibility_timeout,
                                   settings.heartbeat_interval,
                                   on_alive=lambda: self.health.beat("heartbeat"))
        self.summary = Summary()
        self.pixels = PixelBudget(settings.decode_pixel_budget)
        self._io = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="io")
        self._lock = threading.Condition()
        self._held: dict[str, HeldMessage] = {}
        self._ready: list[job_io.JobState] = []
        self._waiting: list[tuple[HeldMessage, job_io.JobState]] = []
        self._preparing = 0
        self._writing = 0
        self._to_delete: list[str] = []
        self._stopping = threading.Event()
        self._aborting = threading.Event()
        self._stop_at: float | None = None
        self._last_activity = time.monotonic()
        self._receive_failing_since: float | None = None
        self._last_receive_error = ""
        self._finished_jobs = 0
        self._max_jobs: int | None = None
        self._batch_seconds: dict[BatchKey, float] = {}  # last seconds per image
        self.fatal: str | None = None  # why the worker stopped on its own, if it did

    # -- public ---------------------------------------------------------------------

    def run(self, *, exit_when_idle: float | None = None, max_jobs: int | None = None) -> Summary:
        self._max_jobs = max_jobs
        self._exit_when_idle = exit_when_idle
        self.health.beat("engine")
        if self.settings.warmup_shapes:
            # Before the first receive: no message waits on a compile.
            self.engine.warm_up(self.settings.default_models, self.settings.warmup_sizes(),
                                on_step=lambda: self.health.beat("engine") or False)
        log.info("worker %s starting on %s", self.worker_id, self.queue.queue_url)
        self.health.beat("engine")
        self.heartbeat.start()
        receiver = self._start_loop("receiver", self._receive_loop)
        self._start_loop("deleter", self._delete_loop)
        self._start_loop("waiter", self._wait_loop)
        if self.protection.enabled:
            self._start_loop("protection", self._protection_loop)
        try:
            self._engine_loop()
        finally:
            self._stopping.set()
            self._drain_writes()
            self._release_all_unstarted()
            self._flush_deletes()
            if not self._aborting.is_set():
                # A long poll in flight may still bring messages: wait for it (they are
                # released at once), but never past the stop deadline.
                left = (self._stop_at - time.monotonic()) if self._stop_at else None
                wait = self.settings.receive_wait_seconds + 5
                receiver.join(timeout=max(0.0, min(wait, left)) if left is not None else wait)
            self._release_all_unstarted()  # anything the last long poll brought in
            self._flush_deletes(final=True)
            self.heartbeat.stop()
            self._io.shutdown(wait=True, cancel_futures=True)
            self.protection.update(busy=False)
            log.info(self.summary.line(self.worker_id))
        return self.summary

    def _start_loop(self, name: str, target: Callable[[], None]) -> threading.Thread:
        """A daemon thread whose unexpected death is logged, fails the health check and
        stops the worker (it releases what it holds and exits non-zero)."""
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - reported, then the worker stops
                reason = f"{type(exc).__name__}: {exc}"
                log.critical("the %s loop died: %s", name, reason, exc_info=True)
                self.health.died(name, reason)
                self.fatal = self.fatal or f"the {name} loop died: {reason}"
                self.request_stop()
            else:
                self.health.forget(name)

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    def on_signal(self) -> None:
        """Signal handler body: hand the work to a thread, never touch state here.

        The handler runs in the main thread between two bytecodes, possibly while that
        thread holds the (re-entrant) lock in the middle of an update.
        """
        threading.Thread(target=self.request_stop, name="stop", daemon=True).start()

    def request_stop(self) -> None:
        """First signal: stop receiving, release what has not started, meet the deadline."""
        with self._lock:
            second = self._stop_at is not None
            if not second:
                self._stop_at = time.monotonic() + self.settings.stop_deadline
        if second:
            self.abort()
            return
        log.info("stopping: releasing unstarted jobs; deadline %.0f s",
                 self.settings.stop_deadline)
        self._stopping.set()
        self._release_all_unstarted()
        with self._lock:
            self._lock.notify_all()

    def abort(self) -> None:
        """Second signal: stop the running batch between steps and release everything."""
        log.warning("second signal: releasing everything and exiting")
        self._aborting.set()
        self._stopping.set()
        with self._lock:
            receipts = self._close_all(list(self._held))
            self._ready.clear()
        self._release(receipts, 0)
        self._count("released", len(receipts))
        with self._lock:
            self._lock.notify_all()

    # -- receiving ------------------------------------------------------------------

    def _capacity(self) -> int:
        """How many more messages to take: up to prefetch_batches full batches waiting."""
        prefetch = self.settings.max_batch_size * self.settings.prefetch_batches
        with self._lock:
            capacity = prefetch - (len(self._ready) + self._preparing + len(self._waiting))
            if self._max_jobs is not None:
                capacity = min(capacity,
                               self._max_jobs - self._finished_jobs - len(self._held))
            return max(0, min(MAX_RECEIVE_MESSAGES, capacity))

    def _receive_loop(self) -> None:
        while not self._stopping.is_set():
            self.health.beat("receiver")
            capacity = self._capacity()
            if capacity == 0:
                time.sleep(0.05)
                continue
            try:
                messages = self.queue.receive(capacity, self.settings.receive_wait_seconds,
                                              self.settings.visibility_timeout,
                                              time.monotonic())
            except Exception as exc:  # noqa: BLE001 - SQS hiccups must not kill the loop
                if is_configuration_error(exc):
                    # No such queue, no permission: waiting will not fix it. Say so and stop.
                    self.fatal = f"cannot receive from {self.queue.queue_url}: {exc}"
                    log.error(self.fatal)
                    self.request_stop()
                    return
                with self._lock:
                    if self._receive_failing_since is None:
                        self._receive_failing_since = time.monotonic()
                    self._last_receive_error = repr(exc)
                log.warning("receive failed: %r; retrying", exc)
                if self._idle_exit():
                    self._stop_idle()
                    return
                self._stopping.wait(1 + random.random())
                continue
            with self._lock:
                self._receive_failing_since = None
            self.health.beat("receiver")
            if not messages and self._idle_exit():
                self._stop_idle()
                return
            if self._stopping.is_set():
                # Received during shutdown: hand them straight back.
                self._release([m.receipt_handle for m in messages], 0)
                self._count("released", len(messages))
                return
            for message in messages:
                self._accept(message)

    def _stop_idle(self) -> None:
        """End the run: nothing held, nothing in flight; the engine loop returns."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()

    def _accept(self, message: ReceivedMessage) -> None:
        """Take one message; whatever its body, it ends (jobs, failure, or release)."""
        with self._lock:
            self._last_activity = time.monotonic()
        self.heartbeat.hold(message.receipt_handle, message.received_at)
        try:
            self._start_jobs(message)
        except Exception as exc:  # noqa: BLE001 - one message must never stop the receiver
            log.exception("message %s could not be taken (%r); releasing it toward the DLQ",
                          message.message_id, exc, extra={"message_id": message.message_id})
            with self._lock:
                held = self._held.get(message.receipt_handle)
            if held is not None:
                self._release_message(held, delay=0)
            else:
                self._release([message.receipt_handle], 0)
                self._count("released")

    def _start_jobs(self, message: ReceivedMessage) -> None:
        decoded = decode_body(message.body, self.settings)
        extra = {"message_id": message.message_id}
        if decoded.poison is not None:
            # Not a job: never processed. Visible again at once, so SQS redrive moves it
            # to the DLQ after maxReceiveCount receives, within seconds.
            log.error("message %s is not a job (receive %d): %s", message.message_id,
                      message.receive_count, decoded.poison, extra=extra)
            self._count("poison")
            self._release([message.receipt_handle], 0)
            return
        if decoded.ignored is not None:
            log.info("ignoring message %s: %s", message.message_id, decoded.ignored,
                     extra=extra)
            self._delete(message.receipt_handle)
            return
        for note in decoded.notes:
            log.warning("message %s: %s", message.message_id, note, extra=extra)
        # Protected before any work starts, so a scale-in never picks this task now.
        self.protection.update(busy=True)
        states = [job_io.JobState(job=job, receipt=message.receipt_handle,
                                  received_at=message.received_at,
                                  message_id=message.message_id,
                                  from_event=decoded.from_event) for job in decoded.jobs]
        held = HeldMessage(message, open_jobs=len(states) + len(decoded.bad_jobs),
                           states=states)
        with self._lock:
            self._held[message.receipt_handle] = held
            self._preparing += len(states)
        for bad in decoded.bad_jobs:
            self._submit(held, self._fail_bad_job, held, bad)
        for state in states:
            self._submit(held, self._prepare, held, state)

    def _submit(self, held: HeldMessage, fn: Callable[..., None], *args: object) -> None:
        """Run ``fn`` in the I/O pool; an exception that escapes it releases the message
        (toward the DLQ) instead of vanishing in a future nobody reads."""
        def task() -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001
                log.exception("unexpected error in %s: %r; releasing message %s", fn.__name__,
                              exc, held.message.message_id)
                self._release_message(held, delay=0)

        self._io.submit(task)

    def _prepare(self, held: HeldMessage, state: job_io.JobState) -> None:
        """Check, claim, download and decode one job (I/O thread)."""
        job = state.job
        try:
            if not job_io.output_allowed(job.output, self.settings):
                # No record can be written outside the allowed outputs: the DLQ keeps it.
                log.error("job %s: output %s outside IMG2IMG_ALLOWED_OUTPUTS; releasing "
                          "to the DLQ", job.job_id, job.output.uri,
                          extra={"job_id": job.job_id, "batch_id": job.batch_id})
                self._complete_job(held, retry=True, delay=0)
                return
            job_io.check_locations(job, self.settings)
            self.engine.check_model(job.model)
            claim = job_io.claim(self.storage, state, worker_id=self.worker_id,
                                 lease_seconds=self._lease_seconds())
            if claim is Claim.CLAIMED:
                self._load_input(held, state)
            else:
                self._claim_outcome(held, state, claim)
        except Exception as exc:  # noqa: BLE001 - every outcome is recorded
            self._job_failed(held, state, exc)
        finally:
            with self._lock:
                self._preparing -= 1
                self._lock.notify_all()

    def _load_input(self, held: HeldMessage, state: job_io.JobState) -> None:
        job_io.read_and_prepare(self.storage, state, self.settings, self.pixels)
        with self._lock:
            if held.message.receipt_handle in self._held:
                self._ready.append(state)
                self._lock.notify_all()

    def _claim_outcome(self, held: HeldMessage, state: job_io.JobState, claim: Claim) -> None:
        """Another delivery of this job finished it, or is running it now."""
        job = state.job
        extra = {"job_id": job.job_id, "batch_id": job.batch_id}
        if claim is Claim.FINISHED:
            job_io.write_marker(self.storage, job.output, job.batch_id, job.job_id, "done")
            self._count("duplicates")
            log.info("job %s already done; acknowledging", job.job_id, extra=extra)
            self._complete_job(held)
            return
        log.info("job %s is running under another delivery; waiting for its outcome",
                 job.job_id, extra=extra)
        with self._lock:
            self._waiting.append((held, state))

    def _lease_seconds(self) -> float:
        return CLAIM_LEASE_TIMEOUTS * self.settings.visibility_timeout

    def _wait_loop(self) -> None:
        """Look again at jobs that wait on another delivery: acknowledge them when it
        ends, run them when it lets go."""
        while not self._stopping.wait(WAIT_RECHECK_SECONDS):
            self.health.beat("waiter")
            with self._lock:
                waiting, self._waiting = self._waiting, []
            for held, state in waiting:
                if held.closed:
                    continue
                with self._lock:
                    self._preparing += 1
                self._submit(held, self._recheck, held, state)

    def _recheck(self, held: HeldMessage, state: job_io.JobState) -> None:
        try:
            claim = job_io.recheck(self.storage, state, worker_id=self.worker_id,
                                   lease_seconds=self._lease_seconds())
            if claim is Claim.CLAIMED:
                self._load_input(held, state)
            elif claim is Claim.FINISHED:
                self._count("duplicates")
                log.info("job %s ended under another delivery; acknowledging",
                         state.job.job_id, extra={"job_id": state.job.job_id,
                                                  "batch_id": state.job.batch_id})
                self._complete_job(held)
            else:
                with self._lock:
                    self._waiting.append((held, state))
        except Exception as exc:  # noqa: BLE001
            self._job_failed(held, state, exc)
        finally:
            with self._lock:
                self._preparing -= 1
                self._lock.notify_all()

    # -- the engine -----------------------------------------------------------------

    def _engine_loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            key, states = batch
            self._run_batch(key, states)

    def _next_batch(self) -> tuple[BatchKey, list[job_io.JobState]] | None:
        with self._lock:
            while True:
                if self._aborting.is_set():
                    return None
                if self._stopping.is_set() and not self._ready:
                    return None
                if self._max_jobs is not None and self._finished_jobs >= self._max_jobs \
                        and not self._ready:
                    return None
                if self._ready:
                    break
                self._lock.wait(timeout=0.5)
                self.health.beat("engine")
            # Give a partial batch a moment to fill while jobs are still being prepared.
            deadline = time.monotonic() + BATCH_FILL_WAIT_SECONDS
            while (len(self._ready) < self.settings.max_batch_size and self._preparing
                   and not self._stopping.is_set() and time.monotonic() < deadline):
                self._lock.wait(timeout=max(0.0, deadline - time.monotonic()))
            key, states = group_batches(self._ready, self._key, self.settings.max_batch_size)[0]
            taken = {id(s) for s in states}
            self._ready = [s for s in self._ready if id(s) not in taken]
            for state in states:
                if state.receipt in self._held:
                    self._held[state.receipt].started = True
            return key, states

    def _idle_exit(self) -> bool:
        """True when --exit-when-idle should end the run now (the receiver asks, between
        receives, so no long poll is in flight when the worker exits).

        Idle means SQS answered and had nothing for us: a receive that fails is not
        idleness. When receiving has failed for the whole idle period, the run ends
        as a failure (``fatal``) rather than as a quiet success.
        """
        exit_when_idle = self._exit_when_idle
        if exit_when_idle is None:
            return False
        with self._lock:
            if (self._held or self._writing or self._waiting or self._to_delete
                    or self._ready or self._preparing):
                return False
            failing_since = self._receive_failing_since
            last_activity = self._last_activity
        now = time.monotonic()
        if failing_since is not None:
            if now - failing_since < exit_when_idle:
                return False
            self.fatal = (f"cannot reach the queue for {now - failing_since:.0f} s: "
                          f"{self._last_receive_error}")
            log.error(self.fatal)
            return True
        idle_for = now - last_activity
        if idle_for < exit_when_idle:
            return False
        log.info("idle for %.0f s; exiting", idle_for)
        return True

    @staticmethod
    def _key(state: job_io.JobState) -> BatchKey:
        assert state.prepared is not None
        return BatchKey.of(state.job.params, state.prepared.size)

    def _run_batch(self, key: BatchKey, states: list[job_io.JobState]) -> None:
        held = {s.receipt: self._held.get(s.receipt) for s in states}
        try:
            self._generate_and_write(key, states, held)
        except Exception as exc:  # noqa: BLE001 - a bug here fails these jobs, not the worker
            log.exception("batch of %d could not run: %r", len(states), exc)
            for state in states:
                self._job_failed(held[state.receipt], state, exc)

    def _generate_and_write(self, key: BatchKey, states: list[job_io.JobState],
                            held: dict[str, HeldMessage | None]) -> None:
        if self._stopping.is_set() and not self._fits_deadline(key, len(states)):
            log.info("batch of %d would not finish before the stop deadline; releasing",
                     len(states))
            for state in states:
                self._complete_job(held[state.receipt], retry=True, delay=0)
            return
        items = [GenerationItem(s.prepared.image, s.job.prompt, s.job.negative_prompt, s.seed)
                 for s in states if s.prepared is not None]
        started = time.perf_counter()
        try:
            outputs = self.engine.generate(key, items, on_step=self._on_step)
        except GenerationInterrupted:
            log.info("batch of %d interrupted by shutdown; releasing", len(states))
            for state in states:
                self._complete_job(held[state.receipt], retry=True, delay=0)
            return
        except Exception as exc:  # noqa: BLE001 - the batch fails, the worker goes on
            log.exception("batch of %d failed: %r", len(states), exc)
            for state in states:
                self._job_failed(held[state.receipt], state, exc)
            return
        seconds = time.perf_counter() - started
        self._batch_seconds[key] = seconds / len(states)
        stats = self.engine.last_stats
        for state in states:
            state.timings["inference"] = seconds / len(states)
            state.timings["batch_size"] = len(states)
        with self._lock:
            self._writing += len(states)
        for state, output in zip(states, outputs, strict=True):
            holder = held[state.receipt]
            if holder is None:
                with self._lock:
                    self._writing -= 1
                continue
            self._submit(holder, self._write, holder, state, output)
        metrics = {"BatchSize": float(len(states)), "InferenceSeconds": seconds,
                   "SecondsPerImage": seconds / len(states)}
        if stats.model_load_seconds:
            metrics["ModelLoadSeconds"] = stats.model_load_seconds
        if stats.peak_memory_bytes is not None:
            metrics["GpuMemoryPeakBytes"] = float(stats.peak_memory_bytes)
        emit_metrics(metrics, {"Model": key.model},
                     {"InferenceSeconds": "Seconds", "SecondsPerImage": "Seconds",
                      "ModelLoadSeconds": "Seconds", "GpuMemoryPeakBytes": "Bytes"})

    def _fits_deadline(self, key: BatchKey, size: int) -> bool:
        if self._stop_at is None:
            return True
        per_image = self._batch_seconds.get(key)
        return per_image is None or time.monotonic() + per_image * size <= self._stop_at

    def _on_step(self) -> bool:
        self.health.beat("engine")
        if self._aborting.is_set():
            return True
        return self._stop_at is not None and time.monotonic() > self._stop_at

    # -- finishing ------------------------------------------------------------------

    def _write(self, held: HeldMessage, state: job_io.JobState, output) -> None:
        try:
            record = job_io.write_output(self.storage, state, output, self.worker_id)
        except Exception as exc:  # noqa: BLE001
            self._job_failed(held, state, exc)
        else:
            self._count("done")
            self._log_record(record)
            self._emit_job_metrics(state, "done")
            self._complete_job(held)
        finally:
            with self._lock:
                self._writing -= 1
                self._lock.notify_all()

    def _job_failed(self, held: HeldMessage, state: job_io.JobState,
                    exc: BaseException) -> None:
        job = state.job
        extra = {"job_id": job.job_id, "batch_id": job.batch_id}
        if isinstance(exc, job_io.OwnOutput):
            log.info("job %s skipped: %s", job.job_id, exc, extra=extra)
            self._release_claim(state)
            self._count("skipped")
            self._complete_job(held)
            return
        if not is_permanent(exc):
            log.warning("job %s: transient error, will retry: %s", job.job_id, exc,
                        extra=extra)
            self._complete_job(held, retry=True)
            return
        if not isinstance(exc, Img2ImgError):
            log.error("job %s failed unexpectedly: %r", job.job_id, exc, extra=extra)
        try:
            record = job_io.write_failure(
                self.storage, job_id=job.job_id, batch_id=job.batch_id,
                input_uri=job.input.uri, output=job.output, error=exc,
                worker_id=self.worker_id, seconds=time.monotonic() - state.received_at,
                model=job.model, prompt=job.prompt, seed=state.seed, claimed=state.claimed)
        except Exception as write_exc:  # noqa: BLE001 - cannot record: retry later
            log.warning("job %s: could not write its failed record: %r", job.job_id,
                        write_exc, extra=extra)
            self._complete_job(held, retry=True)
            return
        state.claimed = False
        if record is None:
            log.warning("job %s failed (%s) but a record of it exists; it is kept",
                        job.job_id, exc, extra=extra)
        else:
            self._count("failed")
            self._log_record(record)
            self._emit_job_metrics(state, "failed")
        self._complete_job(held)

    def _fail_bad_job(self, held: HeldMessage, bad: BadJob) -> None:
        if not job_io.output_allowed(bad.output, self.settings):
            self._release_message(held, delay=0)
            return
        try:
            record = job_io.write_failure(
                self.storage, job_id=bad.job_id, batch_id=bad.batch_id,
                input_uri=bad.input_uri, output=bad.output, error=bad.error,
                worker_id=self.worker_id, seconds=0.0, claimed=False)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record invalid job %s: %r", bad.job_id, exc)
            self._release_message(held, delay=self._backoff(held))
            return
        if record is None:
            log.warning("invalid job %s (%s): a record of that job exists and is kept",
                        bad.job_id, bad.error, extra={"job_id": bad.job_id})
        else:
            self._count("failed")
            self._log_record(record)
        self._complete_job(held, retry=False)

    def _complete_job(self, held: HeldMessage | None, *, retry: bool = False,
                      delay: int | None = None) -> None:
        """One job of ``held`` is over: delete the message (or release it for a retry)
        once all its jobs are."""
        if held is None:
            return
        with self._lock:
            if held.closed:  # released by a shutdown meanwhile: its receipt is stale
                return
            held.open_jobs -= 1
            held.retry = held.retry or retry
            self._finished_jobs += 0 if retry else 1
            last = held.open_jobs <= 0
            self._last_activity = time.monotonic()
            self._lock.notify_all()
        if not last:
            return
        if held.retry:
            self._release_message(held, self._backoff(held) if delay is None else delay)
        else:
            with self._lock:
                self._close_all([held.message.receipt_handle])
                held.closed = True
            self._delete(held.message.receipt_handle)

    def _release_message(self, held: HeldMessage, delay: int) -> None:
        with self._lock:
            if held.closed:
                return
            held.closed = True
            self._close_all([held.message.receipt_handle])
        self._release([held.message.receipt_handle], delay)
        self._release_claims([held])
        self._count("released")

    def _release_claims(self, messages: list[HeldMessage]) -> None:
        """Drop the running records of released jobs, so another delivery of the same
        job need not wait for the claim to lapse."""
        for held in messages:
            for state in held.states:
                self._release_claim(state)

    def _release_claim(self, state: job_io.JobState) -> None:
        try:
            job_io.release_claim(self.storage, state)
        except Exception as exc:  # noqa: BLE001 - the claim lapses on its own
            log.warning("job %s: could not drop its claim: %r", state.job.job_id, exc)

    def _close_all(self, receipts: list[str]) -> list[str]:
        """Drop receipts from the held set (lock held); return those that were held."""
        closed = []
        for receipt in receipts:
            held = self._held.pop(receipt, None)
            if held is not None:
                held.closed = True
                closed.append(receipt)
        return closed

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self.summary, name, getattr(self.summary, name) + amount)

    def _backoff(self, held: HeldMessage) -> int:
        """Exponential in the receive count, jittered, capped by SQS's maximum."""
        base = self.settings.release_backoff_seconds
        if base == 0:
            return 0
        delay = base * 2 ** max(0, held.message.receive_count - 1)
        return int(min(delay * random.uniform(0.8, 1.2), MAX_VISIBILITY_SECONDS - 60))

    def _log_record(self, record: ResultRecord) -> None:
        log.info("job %s %s", record.job_id, record.status,
                 extra={"job_id": record.job_id, "batch_id": record.batch_id,
                        "status": record.status, "seconds": record.seconds,
                        "error": record.error.model_dump() if record.error else None})

    def _emit_job_metrics(self, state: job_io.JobState, status: str) -> None:
        metrics = {"ImagesDone" if status == "done" else "ImagesFailed": 1.0}
        metrics.update({f"{name.capitalize()}Seconds": value
                        for name, value in state.timings.items() if name != "batch_size"})
        emit_metrics(metrics, {"Model": state.job.model},
                     {name: "Seconds" for name in metrics if name.endswith("Seconds")})

    # -- SQS bookkeeping --------------------------------------------------------------

    def _release(self, receipts: list[str], delay: int) -> None:
        if not receipts:
            return
        self.heartbeat.forget(receipts)
        try:
            self.queue.release(receipts, delay)
        except Exception as exc:  # noqa: BLE001 - they reappear after the timeout anyway
            log.warning("could not release %d messages: %r", len(receipts), exc)

    def _release_all_unstarted(self) -> None:
        with self._lock:
            messages = [h for h in self._held.values() if not h.started]
            unstarted = self._close_all([h.message.receipt_handle for h in messages])
            gone = set(unstarted)
            self._ready = [s for s in self._ready if s.receipt not in gone]
        if unstarted:
            log.info("releasing %d unstarted messages", len(unstarted))
            self._release(unstarted, 0)
            self._release_claims(messages)
            self._count("released", len(unstarted))

    def _delete(self, receipt: str) -> None:
        self.heartbeat.forget([receipt])
        with self._lock:
            self._to_delete.append(receipt)

    def _delete_loop(self) -> None:
        """Batch deletes every DELETE_FLUSH_SECONDS; while SQS fails them, back off
        (doubling, up to DELETE_BACKOFF_MAX_SECONDS) and say so once, not per try."""
        pause = DELETE_FLUSH_SECONDS
        failing = False
        while not (self._stopping.is_set() and self._io_idle()):
            self.health.beat("deleter")
            time.sleep(pause)
            error = self._flush_deletes()
            if error is None:
                if failing:
                    log.info("deleting messages works again")
                failing, pause = False, DELETE_FLUSH_SECONDS
                continue
            if not failing:
                log.warning("delete failed: %s; retrying with backoff", error)
            failing, pause = True, min(pause * 2, DELETE_BACKOFF_MAX_SECONDS)

    def _protection_loop(self) -> None:
        """Drop scale-in protection once idle (HTTP to the agent, never under the lock)."""
        while not self._stopping.is_set():
            with self._lock:
                busy = bool(self._held) or self._writing > 0 or self._preparing > 0
            self.protection.update(busy=busy)
            self._stopping.wait(PROTECTION_CHECK_SECONDS)

    def _io_idle(self) -> bool:
        with self._lock:
            return self._preparing == 0 and self._writing == 0

    def _flush_deletes(self, *, final: bool = False) -> str | None:
        """Delete what is due; return why some could not be deleted (None: all went).

        ``final``: the worker is exiting, so try a few more times; what still fails
        makes the run fail (those messages come back and are acknowledged as done).
        """
        attempts = 4 if final else 1
        error = None
        for attempt in range(attempts):
            with self._lock:
                receipts, self._to_delete = self._to_delete, []
            if not receipts:
                return None
            try:
                failed = self.queue.delete(receipts)
                error = f"{len(failed)} entries refused" if failed else None
            except Exception as exc:  # noqa: BLE001 - retried on the next flush
                failed, error = receipts, repr(exc)
            if failed:
                with self._lock:
                    self._to_delete.extend(failed)
            if error is None:
                return None
            if attempt + 1 < attempts:
                time.sleep(min(DELETE_BACKOFF_MAX_SECONDS, 0.5 * 2 ** attempt))
        if final:
            with self._lock:
                left = len(self._to_delete)
            self.fatal = self.fatal or (
                f"could not delete {left} finished messages ({error}); they will be "
                "delivered again and acknowledged as already done")
            log.error(self.fatal)
        return error

    def _drain_writes(self) -> None:
        """Wait for uploads of finished batches; they are quick and already computed."""
        with self._lock:
            while (self._writing or self._preparing) and not self._aborting.is_set():
                self._lock.wait(timeout=0.2)


def install_signal_handlers(worker: Worker, signals: tuple[int, ...]) -> None:
    import signal

    def handler(signum: int, frame: object) -> None:
        worker.on_signal()

    for sig in signals:
        signal.signal(sig, handler)


def build_worker(settings: WorkerSettings) -> Worker:
    """Wire the real clients, engine and queue from settings."""
    from producer.aws import s3_client, sqs_client

    pool = settings.io_threads + 4
    s3 = s3_client(max_pool_connections=pool)
    engine = Engine(settings, s3_client_factory=lambda: s3)
    return Worker(settings, engine, SqsQueue(sqs_client(max_pool_connections=pool),
                                             settings.queue_url or ""),
                  S3Storage(s3), protection=TaskProtection.from_environment())
