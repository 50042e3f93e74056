"""The fleet worker's life cycle: SQS in, the job pipeline, S3 out, nothing lost.

Threads: the receiver takes messages from the queue consumer as the pipeline has room;
the pipeline prepares and writes in its I/O threads while this thread runs the engine;
the consumer deletes in batches and keeps held messages invisible; a waiter looks again
at jobs that wait on another delivery; a protection loop keeps ECS from scaling in a
busy task. Every loop beats into the health file; a loop that dies stops the worker.

States (``WorkerState``): RUNNING; DRAINING after the first SIGTERM/SIGINT (stop
receiving, release every message not yet started, let the running batch finish only
if it fits IMG2IMG_STOP_DEADLINE, else stop it between steps and release it) or once
``--exit-when-idle`` found nothing to do; ABORTING after a second signal (release
everything at once); STOPPED.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from common.aws_errors import is_configuration_error
from worker.engine.engine import Engine
from worker.fleet.batch_progress import BatchProgress
from worker.fleet.callback_policy import parse_networks, parse_patterns
from worker.fleet.cancels import CancelWatch
from worker.fleet.consumer import Delivery, QueueConsumer
from worker.fleet.events import Notifier
from worker.fleet.fleet_jobs import FleetJob
from worker.fleet.fleet_source import FleetSource, Summary
from worker.fleet.lifecycle import JobLifecycle
from worker.fleet.object_clients import object_client
from worker.fleet.sqs_queue import MAX_RECEIVE_MESSAGES, SqsQueue
from worker.fleet.storage import S3Storage
from worker.fleet.task_protection import TaskProtection
from worker.health import HealthFile, beat_interval
from worker.images import PixelBudget
from worker.job_pipeline import JobPipeline
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

# How often a job that waits on another delivery of itself looks again (an S3 GET).
WAIT_RECHECK_SECONDS = 2.0
# The protection loop renews or drops protection at least this often.
PROTECTION_CHECK_SECONDS = 5.0
RECEIVE_RETRY_SECONDS = 1.0


class WorkerState(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    ABORTING = "aborting"
    STOPPED = "stopped"


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    def __init__(self, settings: WorkerSettings, engine: Engine,
                 queues: SqsQueue | list[SqsQueue], storage: S3Storage, *,
                 protection: TaskProtection | None = None,
                 worker_id: str | None = None,
                 sns_client: Callable[[], Any] | None = None) -> None:
        """``queues`` in poll order (a high-priority queue first)."""
        self.settings = settings
        self.engine = engine
        self.protection = protection or TaskProtection(None)
        self.worker_id = worker_id or settings.worker_id or default_worker_id()
        self.health = HealthFile(settings.health_file)
        every = self._beat_every = beat_interval(settings.health_max_age)
        self.consumer = QueueConsumer(
            queues if isinstance(queues, list) else [queues],
            visibility_timeout=settings.visibility_timeout,
            wait_seconds=settings.receive_wait_seconds,
            heartbeat_interval=settings.heartbeat_interval, on_alive=self.health.beat,
            beat_every=every)
        self.notifier = Notifier(
            topic_arn=settings.events_topic_arn, sns_client=sns_client,
            webhook_url=settings.webhook_url, webhook_secret=settings.webhook_secret,
            callback_patterns=parse_patterns(settings.allowed_callbacks),
            private_networks=parse_networks(settings.callback_private_networks))
        self.lifecycle = JobLifecycle(
            self.notifier, BatchProgress(storage, self.worker_id),
            CancelWatch(storage, settings.cancel_check_seconds),
            worker_id=self.worker_id)
        self.source = FleetSource(settings, engine, storage, self.consumer, self.lifecycle,
                                  worker_id=self.worker_id,
                                  pixels=PixelBudget(settings.decode_pixel_budget))
        self.pipeline: JobPipeline[FleetJob] = JobPipeline(
            engine, self.source, max_batch_size=settings.max_batch_size,
            io_threads=settings.io_threads,
            prefetch_jobs=settings.max_batch_size * settings.prefetch_batches,
            beat=lambda: self.health.beat("engine"), beat_every=every)
        self.state = WorkerState.STARTING
        self.fatal: str | None = None  # why the worker stopped on its own, if it did
        self._lock = threading.Lock()
        self._stop_at: float | None = None
        self._started = time.monotonic()
        self._last_activity = time.monotonic()
        self._receive_failing_since: float | None = None
        self._last_receive_error = ""
        self._exit_when_idle: float | None = None
        self._max_jobs: int | None = None

    @property
    def summary(self) -> Summary:
        return self.source.summary

    def summary_line(self) -> str:
        return self.summary.line(self.worker_id, time.monotonic() - self._started)

    @property
    def queue_urls(self) -> list[str]:
        return [q.queue_url for q in self.consumer.queues]

    # -- the run ------------------------------------------------------------------------

    def run(self, *, exit_when_idle: float | None = None, max_jobs: int | None = None) -> Summary:
        self._exit_when_idle, self._max_jobs = exit_when_idle, max_jobs
        self.health.beat("engine")
        if self.settings.warmup_shapes:
            # Before the first receive: no message waits on a compile.
            self.engine.warm_up(self.settings.default_models, self.settings.warmup_sizes(),
                                on_step=lambda: self.health.beat("engine") or False)
        log.info("worker %s starting on %s", self.worker_id, ", ".join(self.queue_urls))
        self._set_state(WorkerState.RUNNING)
        self.consumer.start()
        receiver = self._start_loop("receiver", self._receive_loop)
        self._start_loop("waiter", self._wait_loop)
        if self.protection.enabled:
            self._start_loop("protection", self._protection_loop)
        try:
            self.pipeline.run(until=self._done)
        finally:
            self._teardown(receiver)
        return self.summary

    def _done(self) -> bool:
        """The engine loop may end (nothing is ready when this is asked)."""
        if self.state in (WorkerState.DRAINING, WorkerState.ABORTING):
            return True
        return self._max_jobs is not None and self.source.finished >= self._max_jobs

    def _teardown(self, receiver: threading.Thread) -> None:
        if self.state is WorkerState.RUNNING:
            self._set_state(WorkerState.DRAINING)
        self.pipeline.drain()
        self._release_unstarted()
        receiver.join(timeout=self.settings.receive_wait_seconds + 5)
        self._release_unstarted()  # anything the last long poll brought in
        error = self.consumer.close()
        if error is not None:
            self.fatal = self.fatal or error
            log.error(error)
        self.pipeline.shutdown()
        self.notifier.close()
        self.protection.update(busy=False)
        self._set_state(WorkerState.STOPPED)
        self.health.stopped(self.fatal or "exited")
        log.info(self.summary_line())

    def _set_state(self, state: WorkerState) -> None:
        with self._lock:
            self.state = state
        self.pipeline.wake()

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

    # -- signals ------------------------------------------------------------------------

    def on_signal(self) -> None:
        """Signal handler body: hand the work to a thread, never touch state here.

        The handler runs in the main thread between two bytecodes, possibly while that
        thread holds a lock in the middle of an update.
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
        self.pipeline.stop(self._stop_at)
        self.notifier.stop(self._stop_at)
        self._set_state(WorkerState.DRAINING)
        self._release_unstarted()

    def abort(self) -> None:
        """Second signal: stop the running batch between steps and release everything."""
        log.warning("second signal: releasing everything and exiting")
        self._set_state(WorkerState.ABORTING)
        self.notifier.abort()
        self.pipeline.abort()
        self._released(self.consumer.release_all())

    def _release_unstarted(self) -> None:
        released = self.consumer.release_unstarted()
        if released:
            log.info("releasing %d unstarted messages", len(released))
            self._released(released)

    def _released(self, deliveries: list[Delivery]) -> None:
        """Messages handed back: their prepared jobs leave the pipeline, the source
        forgets them and drops those jobs' claims."""
        gone = set(deliveries)
        discarded = self.pipeline.discard_ready(lambda job: job.delivery in gone)
        self.source.released(deliveries, discarded)

    # -- loops --------------------------------------------------------------------------

    def _receiving(self) -> bool:
        return self.state is WorkerState.RUNNING

    def _receive_loop(self) -> None:
        while self._receiving():
            self.health.beat("receiver")
            if self._jobs_left() <= 0:  # --max-jobs: enough taken; wait for them to end
                self.pipeline.wait_for_change(self._beat_every)
                continue
            room = min(self.pipeline.wait_for_capacity(give_up=lambda: not self._receiving(),
                                                       timeout=self._beat_every),
                       self._jobs_left())
            if room <= 0:
                continue
            try:
                deliveries = self.consumer.receive(room, wait_seconds=self._receive_wait())
            except Exception as exc:  # noqa: BLE001 - SQS hiccups must not kill the loop
                if self._receive_failed(exc):
                    return
                continue
            self._receive_failing_since = None
            if not self._receiving():
                # Received during shutdown: hand them straight back.
                self._released(self.consumer.release_unstarted())
                return
            if not deliveries and self._idle_exit():
                self._set_state(WorkerState.DRAINING)
                return
            for delivery in deliveries:
                self._take(delivery)

    def _take(self, delivery: Delivery) -> None:
        self._last_activity = time.monotonic()
        # Protected before any work starts, so a scale-in never picks this task now.
        self.protection.update(busy=True)
        try:
            intake = self.source.take(delivery)
        except Exception as exc:  # noqa: BLE001 - one message must never stop the receiver
            log.exception("message %s could not be taken", delivery.message_id)
            self.source.give_back(delivery, repr(exc))
            return
        for chore in intake.chores:
            self.pipeline.run_io(chore)
        for job in intake.jobs:
            self.pipeline.submit(job)

    def _jobs_left(self) -> int:
        if self._max_jobs is None:
            return MAX_RECEIVE_MESSAGES
        return self._max_jobs - self.source.finished - self.consumer.held_count

    def _receive_failed(self, exc: Exception) -> bool:
        """Handle a failed receive; True when the receiver should end."""
        if is_configuration_error(exc):
            # No such queue, no permission: waiting will not fix it. Say so and stop.
            self.fatal = f"cannot receive from {', '.join(self.queue_urls)}: {exc}"
            log.error(self.fatal)
            self.request_stop()
            return True
        if self._receive_failing_since is None:
            self._receive_failing_since = time.monotonic()
        self._last_receive_error = repr(exc)
        log.warning("receive failed: %r; retrying", exc)
        if self._idle_exit():
            self._set_state(WorkerState.DRAINING)
            return True
        time.sleep(RECEIVE_RETRY_SECONDS)
        return False

    def _receive_wait(self) -> int:
        """The long poll's wait: never past the moment --exit-when-idle ends the run
        (SQS waits whole seconds, at least 1 here so an idle worker does not spin)."""
        wait = self.settings.receive_wait_seconds
        limit = self._exit_when_idle
        if limit is None:
            return wait
        idle_for = time.monotonic() - max(self._last_activity, self.source.last_ended)
        return max(1, min(wait, math.ceil(limit - idle_for)))

    def _idle_exit(self) -> bool:
        """True when --exit-when-idle should end the run now (asked by the receiver
        between receives, so no long poll is in flight when the worker exits).

        Idle means SQS answered and had nothing for us: a receive that fails is not
        idleness. When receiving has failed for the whole idle period, the run ends
        as a failure (``fatal``) rather than as a quiet success.
        """
        limit = self._exit_when_idle
        if limit is None or self.consumer.held_count or self.consumer.deletes_pending \
                or not self.pipeline.idle:
            return False
        now = time.monotonic()
        if self._receive_failing_since is not None:
            if now - self._receive_failing_since < limit:
                return False
            self.fatal = (f"cannot reach the queue for {now - self._receive_failing_since:.0f}"
                          f" s: {self._last_receive_error}")
            log.error(self.fatal)
            return True
        idle_for = now - max(self._last_activity, self.source.last_ended)
        if idle_for < limit:
            return False
        log.info("idle for %.0f s; exiting", idle_for)
        return True

    def _wait_loop(self) -> None:
        while self.state in (WorkerState.STARTING, WorkerState.RUNNING):
            time.sleep(min(WAIT_RECHECK_SECONDS, self._beat_every))
            self.health.beat("waiter")
            self.pipeline.run_io(self.lifecycle.tick)
            for job in self.source.recheck_waiting():
                self.pipeline.submit(job)
            self.pipeline.wake()

    def _protection_loop(self) -> None:
        """Drop scale-in protection once idle (HTTP to the agent, never under a lock)."""
        while self.state is not WorkerState.STOPPED:
            busy = self.consumer.held_count > 0 or not self.pipeline.idle
            self.protection.update(busy=busy)
            self.pipeline.wait_for_change(PROTECTION_CHECK_SECONDS)


def install_signal_handlers(worker: Worker, signals: tuple[int, ...]) -> None:
    import signal

    def handler(signum: int, frame: object) -> None:
        worker.on_signal()

    for sig in signals:
        signal.signal(sig, handler)


def build_worker(settings: WorkerSettings) -> Worker:
    """Wire the real clients, engine and queues from settings."""
    from functools import cache

    from common.aws import client, make_session, s3_client, sqs_client

    pool = settings.io_threads + 4
    # S3 calls are retried by S3Storage, SQS and SNS calls by botocore (common/aws.py).
    session = make_session()
    s3 = s3_client(session, max_pool_connections=pool, max_attempts=1)
    sqs = sqs_client(max_pool_connections=pool, mode="standard")
    models_s3 = cache(lambda: s3_client(mode="standard"))  # model syncs: botocore retries
    sns = cache(lambda: client("sns", mode="standard"))
    engine = Engine(settings, s3_client_factory=models_s3)
    urls = [u for u in (settings.priority_queue_url, settings.queue_url) if u]
    storage = S3Storage(s3, objects=object_client(settings.s3_client, s3, session))
    return Worker(settings, engine, [SqsQueue(sqs, url) for url in urls], storage,
                  protection=TaskProtection.from_environment(), sns_client=sns)
