"""The scaling policy the CDK stack deploys, read from ``infra`` (never from CDK itself).

``infra/config.py`` (the deployment settings: ``maxTasks``, ``backlogPerTask``, Spot,
stop deadline, warm pool) and ``infra/scaling_policy.py`` (cooldowns, the start and
idle alarms) are the
numbers ``infra/scaling.py`` synthesizes; the planner reads the same objects, so a
change to the stack changes the plan. Application Auto Scaling's own alarms for target
tracking are AWS's, not ours: their shape is stated here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infra import scaling_policy
from infra.config import SPOT_DRAIN_LEAD_SECONDS, SPOT_NOTICE_SECONDS, FleetConfig

# Application Auto Scaling creates two alarms for a target tracking policy on
# one-minute datapoints: scale out after 3 in a row above the target, scale in after
# 15 in a row below it (aws-samples/amazon-aurora-labs-for-mysql#3 shows both alarms).
# The scale-in alarm's threshold is taken as 90 % of the target: an assumption, AWS
# does not document it.
TRACKING_PERIOD_SECONDS = 60
TRACKING_HIGH_DATAPOINTS = 3
TRACKING_LOW_DATAPOINTS = 15
TRACKING_LOW_FRACTION = 0.9


@dataclass(frozen=True)
class ScalingPolicy:
    """Backlog-per-task target tracking, the start-from-zero and idle alarms, the
    producer's start call and the warm pool, in numbers.

    ``start_from_backlog``: the start sets ceil(waiting / backlog_per_task) tasks (at
    least ``start_tasks``, at most ``max_tasks``), else exactly ``start_tasks``.
    ``idle_datapoints`` (0: no idle alarm): that many periods in a row with nothing
    visible or in flight set the service to 0, and with ``release_instances_when_idle``
    the GPU group to 0. ``producer_start``: the producer raises the service (and the
    group) to the backlog's need right after it enqueues, instead of waiting for the
    start alarm. ``warm_pool_size``: stopped instances with the image already pulled.
    """

    min_tasks: int
    max_tasks: int
    backlog_per_task: float
    scale_out_cooldown: float
    scale_in_cooldown: float
    start_tasks: int
    start_period: float
    start_evaluation_periods: int
    start_cooldown: float
    period: float = TRACKING_PERIOD_SECONDS
    high_datapoints: int = TRACKING_HIGH_DATAPOINTS
    low_datapoints: int = TRACKING_LOW_DATAPOINTS
    low_fraction: float = TRACKING_LOW_FRACTION
    start_from_backlog: bool = False
    idle_datapoints: int = 0
    idle_cooldown: float = 60.0
    release_instances_when_idle: bool = False
    producer_start: bool = False
    warm_pool_size: int = 0


@dataclass(frozen=True)
class StopTimings:
    """How a task stops: SIGTERM, then the worker's deadline; on Spot, the notice."""

    stop_deadline: float
    spot_notice: float
    spot_drain_lead: float


def fleet_config(**context: Any) -> FleetConfig:
    """The stack's configuration: its defaults with CDK context keys (``maxTasks=8``) as
    overrides, validated as ``cdk synth`` validates them (``infra.config.ContextError``,
    a ValueError naming the key)."""
    return FleetConfig.from_context(context)


def scaling_policy_of(config: FleetConfig, *, producer_start: bool = True) -> ScalingPolicy:
    """The deployed policy; ``producer_start`` says whether the producer's start call is
    used (``img2img-producer enqueue --start``, the default once the fleet is named)."""
    return ScalingPolicy(
        min_tasks=scaling_policy.MIN_TASKS,
        max_tasks=config.max_tasks,
        backlog_per_task=float(config.backlog_per_task),
        scale_out_cooldown=scaling_policy.TRACKING_SCALE_OUT_COOLDOWN_SECONDS,
        scale_in_cooldown=scaling_policy.TRACKING_SCALE_IN_COOLDOWN_SECONDS,
        start_tasks=scaling_policy.START_TASKS,
        start_period=scaling_policy.START_ALARM_PERIOD_SECONDS,
        start_evaluation_periods=scaling_policy.START_ALARM_EVALUATION_PERIODS,
        start_cooldown=scaling_policy.START_COOLDOWN_SECONDS,
        start_from_backlog=scaling_policy.START_FROM_BACKLOG,
        idle_datapoints=scaling_policy.IDLE_ALARM_EVALUATION_PERIODS,
        idle_cooldown=scaling_policy.IDLE_COOLDOWN_SECONDS,
        release_instances_when_idle=scaling_policy.RELEASE_INSTANCES_WHEN_IDLE,
        producer_start=producer_start,
        warm_pool_size=config.warm_pool_size,
    )


def stop_timings_of(config: FleetConfig) -> StopTimings:
    return StopTimings(stop_deadline=float(config.stop_deadline),
                       spot_notice=SPOT_NOTICE_SECONDS,
                       spot_drain_lead=SPOT_DRAIN_LEAD_SECONDS)


def context_from(config_overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Drop overrides left unset (None), so the stack's defaults apply."""
    return {k: v for k, v in (config_overrides or {}).items() if v is not None}
