"""What the simulator needs beyond the scaling policy: engine speed, the worker's
pipeline, how long a task takes to start, and Spot interruptions.

Numbers that are not measured are named assumptions (``ASSUMED_*``) and docs/scaling.md
says where each comes from.
"""

from __future__ import annotations

from dataclasses import dataclass

# The worker's own numbers. The planner runs in the producer's light install, which
# never imports the worker, so they are restated here and
# tests/capacity_planner/test_model.py keeps them equal to the worker's:
# worker/settings.py defaults (IMG2IMG_MAX_BATCH_SIZE, IMG2IMG_PREFETCH_BATCHES),
# worker/fleet/sqs_queue.py MAX_RECEIVE_MESSAGES, worker/job_pipeline.py BATCH_FILL_WAIT_SECONDS.
WORKER_MAX_BATCH_SIZE = 8
WORKER_PREFETCH_BATCHES = 2
MAX_RECEIVE_MESSAGES = 10
BATCH_FILL_WAIT_SECONDS = 0.25

# -- assumptions (not measured; docs/scaling.md gives the reasoning) ----------------------
# SD 1.5, 512 px, the default job (25 steps at strength 0.75: 18 denoising steps), fp16,
# batch 8, on one A10G-class GPU (g5.xlarge).
ASSUMED_SECONDS_PER_IMAGE = 1.0
# Receive -> ready (claim PUT, input GET, decode) and batch end -> output and records
# written and the message deleted; both overlap the engine except at the ends.
ASSUMED_PREPARE_SECONDS = 0.3
ASSUMED_WRITE_SECONDS = 0.3


@dataclass(frozen=True)
class EngineSpeed:
    """One engine call on a batch of n: ``per_batch_seconds + n * per_image_seconds``."""

    per_image_seconds: float = ASSUMED_SECONDS_PER_IMAGE
    per_batch_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.per_image_seconds < 0 or self.per_batch_seconds < 0:
            raise ValueError("engine times cannot be negative")
        if self.per_image_seconds == 0 and self.per_batch_seconds == 0:
            raise ValueError("an engine call must take some time")

    def batch_seconds(self, size: int) -> float:
        return self.per_batch_seconds + size * self.per_image_seconds


@dataclass(frozen=True)
class WorkerPipeline:
    """The worker's receive -> prepare -> batch -> engine -> write loop, as numbers.

    A worker holds at most ``max_batch_size * prefetch_batches`` jobs waiting for the
    engine (received, being prepared, or ready), takes up to ``receive_max`` per
    receive, and gives a partial batch ``batch_fill_wait`` seconds to fill while jobs
    are still being prepared (worker/job_pipeline.py).
    """

    max_batch_size: int = WORKER_MAX_BATCH_SIZE
    prefetch_batches: int = WORKER_PREFETCH_BATCHES
    prepare_seconds: float = ASSUMED_PREPARE_SECONDS
    write_seconds: float = ASSUMED_WRITE_SECONDS
    batch_fill_wait: float = BATCH_FILL_WAIT_SECONDS
    receive_max: int = MAX_RECEIVE_MESSAGES

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.prefetch_batches < 1:
            raise ValueError("batch size and prefetch batches must be at least 1")

    @property
    def prefetch_jobs(self) -> int:
        return self.max_batch_size * self.prefetch_batches


@dataclass(frozen=True)
class StartUp:
    """From a wanted task to a worker taking jobs, and from an idle instance to its end.

    All assumptions until measured on AWS (docs/scaling.md, "Cold start"):
    - ``metric_delay``: a period's SQS/ECS datapoint reaches the alarms this long after
      the period ends;
    - ``capacity``: a task waiting for capacity -> the capacity provider's Auto Scaling
      group launches an instance (billing starts);
    - ``boot``: instance launch -> ECS agent registered (the driver check included);
    - ``image_pull``: the worker image (CUDA, torch) onto a fresh instance;
    - ``model_load``: weights synced to the instance's volume and loaded on the GPU
      (a task placed on an instance that already ran one skips ``boot`` and
      ``image_pull``);
    - ``instance_scale_in``: an instance with no task -> terminated (the capacity
      provider's target tracking scales in after 15 one-minute datapoints);
    - ``start_call``: the producer's last message sent -> its UpdateService and
      SetDesiredCapacity calls answered (the task and the instance are wanted);
    - ``warm_resume``: a stopped warm-pool instance started -> ECS agent registered (no
      boot-time driver check, no image pull: both were done when it was warmed);
    - ``instance_release``: the idle alarm set the group to 0 -> an instance with no
      task terminated (its task first stops: SIGTERM on an idle worker).
    """

    metric_delay: float = 60.0
    capacity: float = 60.0
    boot: float = 90.0
    image_pull: float = 90.0
    model_load: float = 60.0
    instance_scale_in: float = 15 * 60.0
    start_call: float = 5.0
    warm_resume: float = 45.0
    instance_release: float = 60.0

    @property
    def new_instance(self) -> float:
        """Wanted -> taking jobs, on a new instance."""
        return self.capacity + self.boot + self.image_pull + self.model_load

    @property
    def warm_refill(self) -> float:
        """Billed seconds to warm one instance for the pool: boot, pull, then stop."""
        return self.boot + self.image_pull


@dataclass(frozen=True)
class SpotInterruptions:
    """Reclaims of running instances, a Poisson process per instance (seeded)."""

    per_instance_hour: float = 0.0
    seed: int = 15

    def __post_init__(self) -> None:
        if self.per_instance_hour < 0:
            raise ValueError("an interruption rate cannot be negative")
