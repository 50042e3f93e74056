"""The fleet, one event at a time: queue, scaling, instances and the workers' loops.

What is modelled, and how (docs/scaling.md has the reasoning):

- Jobs are counted, not created: the queue and each worker hold (enqueued at, count)
  groups, so a burst of a million jobs runs in seconds.
- Scaling: one datapoint per period (visible, in flight, running, desired), evaluated
  ``metric_delay`` later by ``autoscaling.Autoscaler``; each decision sets the desired
  count. Without a policy the fleet is fixed at ``warm_tasks``.
- Capacity: one task per instance. A wanted task takes an idle instance (model load
  only) or a new one (capacity, boot, image pull, model load); an instance with no task
  is terminated ``instance_scale_in`` later unless a task takes it. Scale-in stops
  tasks not yet running first, then idle ones; a busy task is protected (the worker
  sets ECS task protection) and stops once idle.
- A running worker holds up to ``prefetch_jobs`` jobs waiting for the engine, each ready
  ``prepare_seconds`` after it was received. New jobs go to the workers' waiting
  receives, the longest-waiting first, one receive (up to 10) at a time; a worker whose
  room opens receives at once. The engine takes up to ``max_batch_size``
  ready jobs, giving a partial batch ``batch_fill_wait`` to fill while others are still
  being prepared; results count ``write_seconds`` after the batch.
- SIGTERM (Spot reclaim): stop receiving, release what has not started (visible again at
  once), finish the running batch if it ends within the stop deadline, else release it
  at the deadline; the service starts a replacement on a new instance.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

from capacity_planner.autoscaling import Action, Autoscaler, Datapoint, Decision
from capacity_planner.fast_capacity import FastCapacity
from capacity_planner.fleet_inputs import (
    EngineSpeed,
    SpotInterruptions,
    StartUp,
    WorkerPipeline,
)
from capacity_planner.fleet_state import FleetQueue, Instance, Task, TaskState
from capacity_planner.outcome import (
    ColdStartTimes,
    GpuHours,
    SimulationResult,
    weighted_percentile,
)
from capacity_planner.stack_policy import ScalingPolicy, StopTimings
from capacity_planner.worker_loop import WorkerLoop
from capacity_planner.workload import Workload

# A run that has not ended after this long (simulated) stops and says so.
DEFAULT_HORIZON_SECONDS = 90 * 24 * 3600.0


class FleetSimulator(WorkerLoop, FastCapacity):
    def __init__(self, workload: Workload, *, engine: EngineSpeed,
                 worker: WorkerPipeline, stop: StopTimings,
                 policy: ScalingPolicy | None = None, start_up: StartUp | None = None,
                 spot: SpotInterruptions | None = None, warm_tasks: int = 0,
                 horizon_seconds: float = DEFAULT_HORIZON_SECONDS) -> None:
        """``policy`` None: a fixed fleet of ``warm_tasks`` tasks, running at t=0.
        Otherwise the stack's scaling, from ``warm_tasks`` running tasks (0: cold) or
        the policy's minimum, whichever is more: a minimum is a warm pool."""
        if policy is None and warm_tasks < 1:
            raise ValueError("a fixed fleet needs at least one task")
        self.workload = workload
        self.engine = engine
        self.worker = worker
        self.stop_timings = stop
        self.policy = policy
        self.start_up = start_up or StartUp()
        self.spot = spot or SpotInterruptions()
        self.horizon = horizon_seconds
        self.autoscaler = Autoscaler(policy) if policy else None
        self.desired = max(warm_tasks, policy.min_tasks if policy else 0)
        self.now = 0.0
        self.queue = FleetQueue()
        self.instances: list[Instance] = []
        self.tasks: list[Task] = []
        self.running: list[Task] = []
        self.decisions: list[Decision] = []
        self._events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._rng = random.Random(self.spot.seed)
        self._arrivals_left = workload.images
        self._finished = False
        # books
        self.completed = 0
        self.latencies: list[tuple[float, int]] = []
        self.busy_seconds = 0.0
        self.lost_seconds = 0.0
        self.batches = 0
        self.interruptions = 0
        self.jobs_rerun = 0
        self.peak_tasks = 0
        self.last_result: float | None = None
        self.first: dict[str, float] = {}
        self._init_fast_capacity()

    # -- the event loop ---------------------------------------------------------------

    def _at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._events, (when, next(self._seq), fn, args))

    def run(self) -> SimulationResult:
        for when, count in self.workload.chunks():
            self._at(when, self._arrive, count)
        for _ in range(self.desired):
            self._start_warm_task()
        if self.policy is not None:
            self._at(self.policy.period, self._sample)
        while self._events and not self._finished:
            when, _, fn, args = heapq.heappop(self._events)
            if when > self.horizon:
                break
            self.now = when
            fn(*args)
        return self._result()

    def _maybe_finish(self) -> None:
        if self._arrivals_left or self.completed < self.workload.images:
            return
        if self.policy is None:
            self._finished = True
            return
        alive = [i for i in self.instances if i.alive]
        if len(alive) <= self.policy.min_tasks and self.desired <= self.policy.min_tasks:
            self._finished = True

    # -- jobs arrive ------------------------------------------------------------------

    def _arrive(self, count: int) -> None:
        self.queue.push(self.now, count)
        self._arrivals_left -= count
        self._serve_all()
        self._after_enqueue()

    def _serve_all(self) -> None:
        """New visible jobs. Every running worker with room has a receive waiting, and
        SQS answers waiting receives: the one waiting longest first (the worker that
        received least recently), one receive's worth each, round after round, until
        the jobs or the room run out."""
        order = sorted(self.running, key=lambda t: (t.last_receive, t.id))
        dealt = True
        while dealt and self.queue.visible:
            dealt = any([self._receive(task, once=True) for task in order])
        for task in order:
            self._serve(task)

    # -- scaling ----------------------------------------------------------------------

    def _sample(self) -> None:
        assert self.policy is not None
        point = Datapoint(at=self.now, visible=self.queue.visible,
                          in_flight=sum(t.in_flight for t in self.tasks),
                          running=sum(1 for t in self.tasks
                                      if t.state in (TaskState.RUNNING, TaskState.DRAINING)),
                          desired=self.desired)
        self._at(self.now + self.start_up.metric_delay, self._evaluate, point)
        self._at(self.now + self.policy.period, self._sample)

    def _evaluate(self, point: Datapoint) -> None:
        assert self.autoscaler is not None
        decision = self.autoscaler.observe(point, desired=self.desired, now=self.now)
        if decision is not None:
            self._apply(decision)
        self._maybe_finish()

    def _reconcile(self, *, launch_now: bool = False) -> None:
        """Start or stop tasks until as many are wanted as are active."""
        active = [t for t in self.tasks if not t.stop_when_idle
                  and t.state in (TaskState.WAITING, TaskState.STARTING, TaskState.RUNNING)]
        short = self.desired - len(active)
        if short > 0:
            keep = [t for t in self.tasks if t.stop_when_idle and t.state is TaskState.RUNNING]
            for task in keep[:short]:
                task.stop_when_idle = False  # wanted again before it went idle
                short -= 1
            for _ in range(short):
                self._start_task(launch_now=launch_now)
        elif short < 0:
            newest_first = sorted(active, key=lambda t: -t.id)
            order = ([t for t in newest_first if t.state is TaskState.WAITING]
                     + [t for t in newest_first if t.state is TaskState.STARTING]
                     + [t for t in active if t.state is TaskState.RUNNING and t.idle]
                     + [t for t in active if t.state is TaskState.RUNNING and not t.idle])
            for task in order[:-short]:
                self._scale_in(task)

    # -- instances and tasks ----------------------------------------------------------

    def _start_warm_task(self) -> None:
        instance = Instance(next(self._ids), launched_at=0.0, ready_at=0.0, has_image=True)
        self.instances.append(instance)
        task = Task(next(self._ids), TaskState.STARTING, instance=instance)
        instance.task = task
        self.tasks.append(task)
        self._schedule_interruption(instance)
        self._at(0.0, self._task_running, task)

    def _start_task(self, *, launch_now: bool = False) -> None:
        task = Task(next(self._ids), TaskState.WAITING)
        self.tasks.append(task)
        free = [i for i in self.instances if i.alive and i.task is None and i.reclaim_at is None]
        free.sort(key=lambda i: (i.ready_at is None, i.launched_at is None, i.id))
        instance = free[0] if free else self._new_instance(launch_now=launch_now)
        instance.task, task.instance = task, instance
        instance.idle_token += 1  # a pending scale-in of this instance no longer applies
        if instance.ready_at is not None:
            self._place(task)

    def _launch(self, instance: Instance) -> None:
        if instance.launch_cancelled:
            return
        instance.launched_at = self.now
        self.first.setdefault("instance_launched", self.now)
        self._schedule_interruption(instance)
        self._at(self.now + self._boot_seconds(instance), self._instance_ready, instance)

    def _instance_ready(self, instance: Instance) -> None:
        if not instance.alive:
            return
        instance.ready_at = self.now
        self.first.setdefault("instance_ready", self.now)
        if instance.task is not None:
            self._place(instance.task)
        else:
            self._idle(instance)

    def _place(self, task: Task) -> None:
        assert task.instance is not None
        task.state = TaskState.STARTING
        task.placed_at = self.now
        delay = self.start_up.model_load
        if not task.instance.has_image:
            delay += self.start_up.image_pull
            task.instance.has_image = True
        self._at(self.now + delay, self._task_running, task)

    def _task_running(self, task: Task) -> None:
        if task.state is not TaskState.STARTING or task.instance is None:
            return
        instance = task.instance
        # Billed but not yet working: since launch for its first task, since placement
        # for a later one.
        since = instance.launched_at if not instance.tasks_started else task.placed_at
        instance.startup_seconds += self.now - (since or 0.0)
        instance.tasks_started += 1
        task.state = TaskState.RUNNING
        self.running.append(task)
        self.peak_tasks = max(self.peak_tasks, len(self.running))
        self.first.setdefault("task_running", self.now)
        self._serve(task)

    def _scale_in(self, task: Task) -> None:
        if task.state is TaskState.RUNNING and not task.idle:
            task.stop_when_idle = True  # protected while busy
            return
        self._stopped(task)

    def _stopped(self, task: Task) -> None:
        if task.state is TaskState.STOPPED:
            return
        if task in self.running:
            self.running.remove(task)
        task.state = TaskState.STOPPED
        instance, task.instance = task.instance, None
        if instance is None:
            return
        instance.task = None
        if instance.launched_at is None:
            instance.launch_cancelled = True  # the capacity was never launched
        elif instance.reclaim_at is None and instance.ready_at is not None:
            self._idle(instance)

    def _idle(self, instance: Instance) -> None:
        instance.idle_token += 1
        if self.policy is not None:
            self._at(self.now + self._idle_seconds(), self._scale_in_instance,
                     instance, instance.idle_token)

    def _scale_in_instance(self, instance: Instance, token: int) -> None:
        if instance.alive and instance.task is None and instance.idle_token == token:
            self._terminate(instance)

    def _terminate(self, instance: Instance) -> None:
        if not instance.alive:
            return
        instance.terminated_at = self.now
        task = instance.task
        if task is not None and task.state is not TaskState.STOPPED:
            self._release_held(task)  # killed: what it held is delivered again
            if task.batch_end is not None:
                self._abort_batch(task, task.batch_token)
            self._stopped(task)
        self._maybe_finish()

    # -- Spot -------------------------------------------------------------------------

    def _schedule_interruption(self, instance: Instance) -> None:
        if self.spot.per_instance_hour > 0:
            after = self._rng.expovariate(self.spot.per_instance_hour / 3600.0)
            self._at(self.now + after, self._interrupt, instance)

    def _interrupt(self, instance: Instance) -> None:
        if not instance.alive or instance.reclaim_at is not None:
            return
        self.interruptions += 1
        instance.reclaim_at = self.now + self.stop_timings.spot_notice
        self._at(instance.reclaim_at, self._terminate, instance)
        task = instance.task
        if task is not None:
            if task.state is TaskState.RUNNING:
                self._sigterm(task)
            else:
                self._stopped(task)
        self._reconcile()  # the service replaces the task, elsewhere
        self._serve_all()

    def _sigterm(self, task: Task) -> None:
        if task in self.running:
            self.running.remove(task)
        task.state = TaskState.DRAINING
        self._release_held(task)
        if task.batch_end is None:
            self._stopped(task)
        elif task.batch_end - self.now > self.stop_timings.stop_deadline:
            self._at(self.now + self.stop_timings.stop_deadline, self._abort_batch, task,
                     task.batch_token)

    def _release_held(self, task: Task) -> None:
        if task.held_count:
            self.queue.push_front([(e, int(n)) for e, n, _ in task.held])
            self.jobs_rerun += task.held_count
            task.held.clear()
            task.held_count = 0

    def _abort_batch(self, task: Task, token: int) -> None:
        if task.batch_token != token or task.batch_end is None:
            return
        self.lost_seconds += self.now - task.batch_started
        self.queue.push_front(task.batch)
        self.jobs_rerun += task.batch_size
        task.batch, task.batch_size, task.batch_end = [], 0, None
        task.batch_token += 1
        self._stopped(task)
        self._serve_all()

    # -- the result -------------------------------------------------------------------

    def _result(self) -> SimulationResult:
        end = self.now
        drain = self.last_result if self.completed == self.workload.images else None
        billed, tail, startup = self.refill_seconds, 0.0, 0.0
        for instance in self.instances:
            if instance.launched_at is None:
                continue
            stop = instance.terminated_at if instance.terminated_at is not None else end
            billed += stop - instance.launched_at
            startup += instance.startup_seconds
            if drain is not None:
                tail += max(0.0, stop - max(instance.launched_at, drain))
        starts = [d.at for d in self.decisions
                  if d.action in (Action.START, Action.PRODUCER_START)]
        hours = GpuHours(billed=billed / 3600, busy=self.busy_seconds / 3600,
                         lost_to_interruptions=self.lost_seconds / 3600,
                         startup=startup / 3600, tail=tail / 3600,
                         warm_pool_refill=self.refill_seconds / 3600)
        return SimulationResult(
            images=self.workload.images, completed=self.completed, drain_seconds=drain,
            latency_p50=weighted_percentile(self.latencies, 0.50),
            latency_p99=weighted_percentile(self.latencies, 0.99),
            latency_max=max((v for v, _ in self.latencies), default=None),
            cold_start=ColdStartTimes(
                start_decision=starts[0] if starts else None,
                instance_launched=self.first.get("instance_launched"),
                instance_ready=self.first.get("instance_ready"),
                task_running=self.first.get("task_running"),
                first_result=self.first.get("result")),
            gpu_hours=hours, peak_tasks=self.peak_tasks, batches=self.batches,
            interruptions=self.interruptions, jobs_rerun=self.jobs_rerun,
            decisions=tuple(self.decisions), ended_at=end, complete=self._finished)
