"""The SQS fleet as the pipeline's job source: messages in, S3 out, messages settled.

A delivery (one SQS message) carries one or more jobs (an S3 event can name several
images). Each job runs through the pipeline on its own; the delivery is settled once
all of its jobs ended: acknowledged, or handed back for a retry when any job needs one.
Outcomes are counted, logged and measured in one place, ``ended``. Jobs that end close
together are then marked and counted in their batches together (``group_commit``),
before their messages are settled: a worker that dies first leaves the messages, whose
redelivery marks and counts the jobs.

A job that another delivery is running (here or on another worker) waits here, aside
from the pipeline, until that delivery's outcome is known: ``recheck_waiting`` hands
back the jobs that may run after all. The same job twice in one message runs once.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from PIL import Image

from common.logs import log_extra
from contract.errors import Img2ImgError, Unrecordable, is_permanent
from contract.result import ErrorInfo, ResultRecord
from worker import metrics
from worker.batching import BatchKey
from worker.engine.engine import BatchStats, Engine
from worker.fleet import duplicates, fleet_jobs
from worker.fleet.consumer import Delivery, QueueConsumer
from worker.fleet.deliveries import Intake, OpenJobs, Summary
from worker.fleet.fleet_jobs import Claim, FleetJob, OwnOutput
from worker.fleet.group_commit import GroupCommit
from worker.fleet.lifecycle import JobLifecycle
from worker.fleet.messages import BadJob, decode_body
from worker.fleet.sqs_queue import MAX_VISIBILITY_SECONDS
from worker.fleet.storage import S3Storage
from worker.images import PixelBudget
from worker.job_pipeline import JobSource
from worker.jobs import Outcome, Readiness, Status
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

# A claim (running record) holds this many visibility timeouts: long enough to cover a
# job's wait in the prefetch queue, short enough that a crashed worker's claim lapses.
CLAIM_LEASE_TIMEOUTS = 2


class FleetSource(JobSource[FleetJob]):
    def __init__(self, settings: WorkerSettings, engine: Engine, storage: S3Storage,
                 consumer: QueueConsumer, lifecycle: JobLifecycle, *, worker_id: str,
                 pixels: PixelBudget) -> None:
        self.settings = settings
        self.engine = engine
        self.storage = storage
        self.consumer = consumer
        self.lifecycle = lifecycle
        self.worker_id = worker_id
        self.pixels = pixels
        self.summary = Summary()
        self.finished = 0  # jobs that ended for good (not handed back)
        self.last_ended = time.monotonic()  # when a job last ended (idleness)
        self._lock = threading.Lock()
        self._open: dict[Delivery, OpenJobs] = {}
        self._waiting: list[FleetJob] = []
        self._running: dict[str, FleetJob] = {}  # job id -> the job taken to run it here
        self._tally: GroupCommit[tuple[FleetJob, Outcome, ResultRecord]] = GroupCommit(
            self._commit_ends)

    @property
    def lease_seconds(self) -> float:
        return CLAIM_LEASE_TIMEOUTS * self.settings.visibility_timeout

    # -- intake (the receiver thread) ---------------------------------------------------

    def take(self, delivery: Delivery) -> Intake:
        """Decode a received message into its jobs; whatever the body, the message ends
        (jobs, a failed record, or back toward the DLQ). A job this worker is already
        running under another delivery waits for it instead of being returned."""
        message = delivery.message
        extra = {"message_id": message.message_id}
        decoded = decode_body(message.body, self.settings)
        if decoded.poison is not None:
            # Not a job: never processed. Visible again at once, so SQS redrive moves it
            # to the DLQ after maxReceiveCount receives, within seconds.
            log.error("message %s is not a job (receive %d): %s", message.message_id,
                      message.receive_count, decoded.poison, extra=extra)
            self._count("poison")
            self.consumer.retry(delivery, 0)
            return Intake()
        if decoded.ignored is not None:
            log.info("ignoring message %s: %s", message.message_id, decoded.ignored,
                     extra=extra)
            self.consumer.ack(delivery)
            return Intake()
        for note in decoded.notes:
            log.warning("message %s: %s", message.message_id, note, extra=extra)
        jobs = [FleetJob.of(wire, delivery, from_event=decoded.from_event)
                for wire in decoded.jobs]
        intake = Intake(chores=[lambda bad=bad: self._record_bad_job(delivery, bad)
                                for bad in decoded.bad_jobs])
        with self._lock:
            self._open[delivery] = OpenJobs(jobs=len(jobs) + len(decoded.bad_jobs))
            for job in jobs:
                if job.job_id in self._running:
                    log.info("job %s is running here under another delivery; waiting for "
                             "its outcome", job.job_id, extra=log_extra(job))
                    self._waiting.append(job)
                else:
                    self._running[job.job_id] = job
                    intake.jobs.append(job)
        return intake

    def give_back(self, delivery: Delivery, reason: str) -> None:
        """A delivery that could not be taken at all goes back toward the DLQ."""
        log.error("message %s could not be taken (%s); releasing it",
                  delivery.message_id, reason, extra={"message_id": delivery.message_id})
        self._forget([delivery])
        if self.consumer.retry(delivery, 0):
            self._count("released")

    @property
    def open_deliveries(self) -> int:
        with self._lock:
            return len(self._open)

    def holding(self) -> int:
        """Jobs waiting on another delivery of themselves."""
        with self._lock:
            return len(self._waiting)

    # -- the pipeline's questions (I/O threads) -----------------------------------------

    def prepare(self, job: FleetJob) -> Readiness | Outcome:
        wire = job.job
        if not job.claimed:
            if not fleet_jobs.output_allowed(wire.output, self.settings):
                raise Unrecordable(f"output {wire.output.uri} is outside "
                                   "IMG2IMG_ALLOWED_OUTPUTS: no record can be written")
            fleet_jobs.check_locations(wire, self.settings)
            self.engine.check_model(wire.model)
            self.engine.check_loras([lora.ref for lora in wire.loras])
            refusal = self.lifecycle.refusal(job)
            if refusal is not None:
                raise refusal
            claim = fleet_jobs.claim(self.storage, job, worker_id=self.worker_id,
                                     lease_seconds=self.lease_seconds)
            if claim is Claim.FINISHED:
                return duplicates.finished_elsewhere(self.storage, job)
            if claim is Claim.FINISHED_HERE:
                return duplicates.ended_by_this_message(self.storage, job)
            if claim is Claim.WAIT:
                log.info("job %s is running under another delivery; waiting for its "
                         "outcome", job.job_id, extra=log_extra(job))
                with self._lock:
                    self._waiting.append(job)
                return Readiness.DEFERRED
        fleet_jobs.read_and_prepare(self.storage, job, self.settings, self.pixels)
        return Readiness.READY

    def write(self, job: FleetJob, image: Image.Image) -> Outcome:
        record = fleet_jobs.write_output(self.storage, job, image, self.worker_id,
                                         self.settings.gpu_price_per_hour)
        return Outcome(Status.DONE, record=record)

    def failure(self, job: FleetJob, error: BaseException) -> Outcome:
        if isinstance(error, OwnOutput):
            self._release_claim(job)
            return Outcome(Status.SKIPPED, reason=str(error))
        if not is_permanent(error):
            self._release_claim(job)
            return Outcome.retry(str(error), getattr(error, "retry_after", None))
        if not isinstance(error, Img2ImgError):
            log.error("job %s failed unexpectedly: %r", job.job_id, error, extra=log_extra(job))
        record = job.failed_record(error, self.worker_id,
                                   gpu_price_per_hour=self.settings.gpu_price_per_hour
                                   ).model_copy(update={"message_id": job.message_id or None})
        try:
            written = fleet_jobs.write_final(self.storage, record, job.job.output,
                                             claimed=job.claimed)
        except Exception as exc:  # noqa: BLE001 - cannot record: retry later
            log.warning("job %s: could not write its failed record: %r", job.job_id, exc,
                        extra=log_extra(job))
            return Outcome.retry(f"failed ({error}) but not recorded: {exc}")
        job.claimed = False
        if not written:
            return Outcome(Status.DUPLICATE, reason=f"{record.status} ({error}), but a "
                           "record of this job exists and is kept")
        return Outcome(Status(record.status), record=record)

    def wanted(self, job: FleetJob) -> bool:
        with self._lock:
            return job.delivery in self._open

    def dropped(self, job: FleetJob) -> None:
        """Prepared after its message was released: only its claim is left to drop."""
        self._release_claim(job)

    def refused(self, job: FleetJob) -> Exception | None:
        return self.lifecycle.refusal_now(job)

    def batch_started(self, jobs: list[FleetJob]) -> None:
        for job in jobs:
            if job.delivery is not None:
                self.consumer.mark_started(job.delivery)

    def batch_ran(self, key: BatchKey, jobs: list[FleetJob], seconds: float,
                  stats: BatchStats | None) -> None:
        metrics.emit_batch(key, len(jobs), seconds, stats)

    # -- outcomes -----------------------------------------------------------------------

    def ended(self, job: FleetJob, outcome: Outcome) -> None:
        """Count, log and measure the outcome, then settle the delivery if it was the
        last of its jobs."""
        extra = log_extra(job)
        record = outcome.record
        counted = False  # its batch counts it: settled once counted (``_commit_ends``)
        if outcome.status in (Status.DONE, Status.FAILED, Status.CANCELLED, Status.EXPIRED):
            self._count(outcome.status.value)
            if record is not None:
                log.info("job %s %s", record.job_id, record.status, extra={
                    **extra, "status": record.status, "seconds": record.seconds,
                    "error": record.error.model_dump() if record.error else None})
                self.lifecycle.announce_job(job, record)
                counted = True
            metrics.emit_job(job, outcome.status.value)
        elif outcome.status is Status.DUPLICATE:
            self._count("duplicates")
            log.info("job %s %s; acknowledging", job.job_id, outcome.reason, extra=extra)
            counted = record is not None  # ended by an earlier delivery, or a twin's
        elif outcome.status is Status.SKIPPED:
            self._count("skipped")
            log.info("job %s skipped: %s", job.job_id, outcome.reason, extra=extra)
        else:
            log.warning("job %s: transient error, will retry: %s", job.job_id,
                        outcome.reason, extra=extra)
        if counted and record is not None and record.final:
            self._tally.add((job, outcome, record))
        else:
            self._settle(job, outcome)

    def _commit_ends(self, ends: list[tuple[FleetJob, Outcome, ResultRecord]]) -> None:
        """Jobs that ended close together: the markers still due (one per batch), their
        counts (one write per counter), their messages settled; then the batches they
        completed announced, each before the one message its claim names is settled. A
        job whose marker could not be written is not counted and its message comes back
        (the redelivery finds the job ended, marks and counts it); so does a message
        whose batch's announcement was not delivered."""
        due = [job for job, _, record in ends if job.marker_due and record.status == "done"]
        unmarked: set[int] = set()
        if due:
            try:
                fleet_jobs.write_markers(self.storage, due, "done")
            except Exception as exc:  # noqa: BLE001 - the redelivery marks them
                log.warning("could not mark %d done job(s) in their batches: %r; their "
                            "messages come back", len(due), exc)
                unmarked = {id(job) for job in due}
        try:
            completed = self.lifecycle.count([(job, record) for job, _, record in ends
                                              if id(job) not in unmarked])
        except Exception:  # noqa: BLE001 - never leave a message unsettled for this
            log.exception("counting %d ended job(s) failed", len(ends))
            completed = []
        naming = {batch.message_id for batch in completed}
        for job, outcome, _ in ends:
            if id(job) in unmarked:
                self._settle(job, Outcome.retry("its batch marker could not be written", 0))
            elif not (job.message_id and job.message_id in naming):
                self._settle(job, outcome)
        unannounced = {batch.message_id for batch in completed
                       if not self.lifecycle.announce(batch)}
        for job, outcome, _ in ends:
            if id(job) not in unmarked and job.message_id and job.message_id in naming:
                self._settle(job, outcome if job.message_id not in unannounced else
                             Outcome.retry("its batch's announcement was not delivered", 0))

    def _settle(self, job: FleetJob, outcome: Outcome) -> None:
        with self._lock:
            if self._running.get(job.job_id) is job:
                del self._running[job.job_id]
        if job.delivery is not None:
            self._job_ended(job.delivery, outcome)

    def lost(self, job: FleetJob, error: BaseException) -> None:
        if job.delivery is not None:
            self.give_back(job.delivery, f"job {job.job_id}: {error!r}")

    def _job_ended(self, delivery: Delivery, outcome: Outcome) -> None:
        with self._lock:
            self.last_ended = time.monotonic()
            state = self._open.get(delivery)
            if state is None:
                return  # released meanwhile (shutdown): its receipt is stale
            state.jobs -= 1
            if outcome.status is Status.RETRY:
                state.retries.append(outcome.retry_after)
            else:
                self.finished += 1
            if state.jobs > 0:
                return
            del self._open[delivery]
        if not state.retries:
            self.consumer.ack(delivery)
            return
        explicit = [r for r in state.retries if r is not None]
        delay = min(explicit) if explicit else self._backoff(delivery)
        if self.consumer.retry(delivery, delay):
            self._count("released")

    def _backoff(self, delivery: Delivery) -> int:
        """Exponential in the receive count, jittered, capped by SQS's maximum."""
        base = self.settings.release_backoff_seconds
        if base == 0:
            return 0
        delay = base * 2 ** max(0, delivery.message.receive_count - 1)
        return int(min(delay * random.uniform(0.8, 1.2), MAX_VISIBILITY_SECONDS - 60))

    def _record_bad_job(self, delivery: Delivery, bad: BadJob) -> None:
        """A message that failed validation but names its own output key."""
        if not fleet_jobs.output_allowed(bad.output, self.settings):
            self._job_ended(delivery, Outcome.retry("output not allowed", 0))
            return
        record = ResultRecord(job_id=bad.job_id, batch_id=bad.batch_id, status="failed",
                              input=bad.input_uri, error=ErrorInfo.from_exception(bad.error),
                              worker=self.worker_id)
        try:
            written = fleet_jobs.write_final(self.storage, record, bad.output, claimed=False)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record invalid job %s: %r", bad.job_id, exc)
            self._job_ended(delivery, Outcome.retry(repr(exc)))
            return
        if written:
            self._count("failed")
            log.info("job %s failed", bad.job_id, extra={
                "job_id": bad.job_id, "batch_id": bad.batch_id, "status": "failed",
                "error": record.error.model_dump() if record.error else None})
        else:
            log.warning("invalid job %s (%s): a record of that job exists and is kept",
                        bad.job_id, bad.error, extra={"job_id": bad.job_id})
        self._job_ended(delivery, Outcome(Status.FAILED if written else Status.DUPLICATE))

    # -- waiting duplicates (the worker's waiter loop) ----------------------------------

    def recheck_waiting(self) -> list[FleetJob]:
        """Look again at jobs that wait on another delivery: acknowledge them when it
        ended; return those that may run now (claimed: to be submitted again). A job
        whose twin still runs in this worker waits without asking S3."""
        with self._lock:
            waiting, self._waiting = self._waiting, []
            here = {job for job in waiting
                    if self._running.get(job.job_id) not in (None, job)}
            self._waiting.extend(here)
        runnable = []
        for job in waiting:
            if job not in here and self.wanted(job) and self._recheck(job):
                runnable.append(job)
        return runnable

    def _recheck(self, job: FleetJob) -> bool:
        """Whether the job may run now; otherwise it ended or waits again."""
        try:
            claim = fleet_jobs.recheck(self.storage, job, worker_id=self.worker_id,
                                       lease_seconds=self.lease_seconds)
            ended = None
            if claim is Claim.FINISHED_HERE:
                ended = duplicates.ended_by_this_message(self.storage, job)
            elif claim is Claim.FINISHED:
                ended = duplicates.finished_elsewhere(self.storage, job)
        except Exception as exc:  # noqa: BLE001
            self.ended(job, self.failure(job, exc))
            return False
        if claim is Claim.CLAIMED:
            with self._lock:
                self._running.setdefault(job.job_id, job)
            return True  # claimed now: prepare only reads the input
        if ended is not None:
            self.ended(job, ended)
        else:
            with self._lock:
                self._waiting.append(job)
        return False

    # -- releases ------------------------------------------------------------------------

    def released(self, deliveries: list[Delivery], discarded: list[FleetJob]) -> None:
        """The consumer handed these back (shutdown): forget them, and drop the claims
        of their prepared jobs the pipeline let go (``discarded``)."""
        self._forget(deliveries)
        for job in discarded:
            self._release_claim(job)
        self._count("released", len(deliveries))

    def _forget(self, deliveries: list[Delivery]) -> None:
        gone = set(deliveries)
        with self._lock:
            for delivery in gone:
                self._open.pop(delivery, None)
            self._waiting = [j for j in self._waiting if j.delivery not in gone]
            self._running = {i: j for i, j in self._running.items() if j.delivery not in gone}

    def _release_claim(self, job: FleetJob) -> None:
        try:
            fleet_jobs.release_claim(self.storage, job)
        except Exception as exc:  # noqa: BLE001 - the claim lapses on its own
            log.warning("job %s: could not drop its claim: %r", job.job_id, exc,
                        extra=log_extra(job))

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self.summary, name, getattr(self.summary, name) + amount)
