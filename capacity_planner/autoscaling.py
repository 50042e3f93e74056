"""The scaling decisions, one one-minute datapoint at a time, as the stack configures them.

Four things change the service's desired count (``infra/scaling.py``,
``infra/idle_scale_in.py``, ``producer/fleet_start.py``):

- the start-from-zero alarm: jobs visible, no task running and none wanted, for one
  period; its step action sets the desired count to exactly the backlog's need
  (``tasks_for_backlog``) and then cools down;
- the producer's start call, right after it enqueues: up to the backlog's need, never
  down (``producer_start``);
- the idle alarm: ``idle_datapoints`` periods in a row with nothing visible and nothing
  in flight while tasks are wanted set the desired count to exactly 0;
- target tracking on (visible + in flight) / running tasks: ``high_datapoints``
  datapoints in a row above the target scale out, ``low_datapoints`` in a row below
  ``low_fraction`` of it scale in, each to ``ceil(desired * metric / target)`` within
  [min, max] and not within its cooldown. With no running task the metric has no value
  (RunningTaskCount is missing): a datapoint without a value breaks both runs.

The model reads one datapoint per period, taken at the period's end: the value a
one-minute statistic has once the minute is over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from capacity_planner.stack_policy import ScalingPolicy
from infra.scaling_policy import start_task_counts


@dataclass(frozen=True)
class Datapoint:
    """What CloudWatch knows at the end of one period."""

    at: float
    visible: int
    in_flight: int
    running: int
    desired: int

    @property
    def backlog_per_task(self) -> float | None:
        """The target-tracking metric; None when no task runs (no value)."""
        if self.running <= 0:
            return None
        return (self.visible + self.in_flight) / self.running


class Action(str, Enum):
    START = "start-from-zero"
    PRODUCER_START = "producer-start"
    SCALE_OUT = "scale-out"
    SCALE_IN = "scale-in"
    IDLE = "idle-to-zero"


def tasks_for_backlog(policy: ScalingPolicy, backlog: int) -> int:
    """The start's ExactCapacity tier: the smallest of the stack's start counts
    (``infra.scaling_policy.start_task_counts``) that is at least ceil(backlog /
    backlog_per_task), within [start_tasks, max_tasks] (exactly start_tasks without
    ``start_from_backlog``)."""
    if not policy.start_from_backlog:
        return min(policy.max_tasks, max(policy.min_tasks, policy.start_tasks))
    need = max(policy.start_tasks, math.ceil(backlog / policy.backlog_per_task))
    counts = start_task_counts(policy.max_tasks)
    return next((c for c in counts if c >= need), counts[-1])


def producer_start(policy: ScalingPolicy, backlog: int, *, desired: int,
                   now: float) -> Decision | None:
    """The producer's start call: raise the desired count to the backlog's need, never
    lower it; None when the fleet already has (or wants) that many."""
    wanted = tasks_for_backlog(policy, backlog) if backlog > 0 else 0
    if wanted <= desired:
        return None
    return Decision(now, Action.PRODUCER_START, desired, wanted, None)


@dataclass(frozen=True)
class Decision:
    at: float
    action: Action
    desired_before: int
    desired_after: int
    metric: float | None

    def line(self) -> str:
        metric = "-" if self.metric is None else f"{self.metric:.1f}"
        return (f"t={self.at:.0f}s {self.action.value}: {self.desired_before} -> "
                f"{self.desired_after} (backlog per task {metric})")


class Autoscaler:
    """Application Auto Scaling and the two alarms, as a state machine over datapoints."""

    def __init__(self, policy: ScalingPolicy) -> None:
        if policy.start_period != policy.period or policy.start_evaluation_periods != 1:
            raise ValueError("the model evaluates the start alarm on the tracking "
                             "datapoints: one period of the same length")
        self.policy = policy
        self._high_run = 0
        self._low_run = 0
        self._last_start: float | None = None
        self._last_out: float | None = None
        self._last_in: float | None = None
        self._idle_run = 0
        self._last_idle: float | None = None

    def observe(self, point: Datapoint, *, desired: int, now: float) -> Decision | None:
        """The decision (if any) when ``point`` is evaluated at ``now`` while ``desired``
        tasks are wanted (the current count, which scaling actions start from)."""
        p = self.policy
        metric = point.backlog_per_task
        if metric is None:
            self._high_run = self._low_run = 0
        else:
            self._high_run = self._high_run + 1 if metric > p.backlog_per_task else 0
            self._low_run = (self._low_run + 1
                             if metric < p.low_fraction * p.backlog_per_task else 0)
        empty = point.visible == 0 and point.in_flight == 0
        self._idle_run = self._idle_run + 1 if empty and point.desired > 0 else 0
        if (point.visible > 0 and point.running == 0 and point.desired == 0
                and not self._cooling(self._last_start, p.start_cooldown, now)):
            self._last_start = now
            after = tasks_for_backlog(p, point.visible)
            return Decision(now, Action.START, desired, after, metric)
        if (p.idle_datapoints and self._idle_run >= p.idle_datapoints
                and desired > p.min_tasks
                and not self._cooling(self._last_idle, p.idle_cooldown, now)):
            self._last_idle = now
            self._idle_run = 0
            return Decision(now, Action.IDLE, desired, p.min_tasks, metric)
        if metric is None:
            return None
        wanted = min(p.max_tasks, max(p.min_tasks,
                                      math.ceil(desired * metric / p.backlog_per_task)))
        if (self._high_run >= p.high_datapoints and wanted > desired
                and not self._cooling(self._last_out, p.scale_out_cooldown, now)):
            self._last_out = now
            return Decision(now, Action.SCALE_OUT, desired, wanted, metric)
        if (self._low_run >= p.low_datapoints and wanted < desired
                and not self._cooling(self._last_in, p.scale_in_cooldown, now)):
            self._last_in = now
            return Decision(now, Action.SCALE_IN, desired, wanted, metric)
        return None

    @staticmethod
    def _cooling(last: float | None, cooldown: float, now: float) -> bool:
        return last is not None and now - last < cooldown
