"""The planner's scaling, decision by decision, and the stack it claims to model.

The scenario below is small enough to follow by hand; each number in the assertions is
derived in the comments from the policy (infra defaults: maxTasks 4, backlogPerTask 32)
and the start-up times chosen here. It follows target tracking alone: the start alarm
setting one task, no producer start and no idle alarm (tests/capacity_planner/
test_fast_start.py follows those).
"""

from __future__ import annotations

import dataclasses

import pytest

from capacity_planner.autoscaling import Action, Autoscaler, Datapoint
from capacity_planner.fleet_inputs import EngineSpeed, StartUp, WorkerPipeline
from capacity_planner.simulator import FleetSimulator
from capacity_planner.stack_policy import (
    ScalingPolicy,
    fleet_config,
    scaling_policy_of,
    stop_timings_of,
)
from capacity_planner.workload import Workload
from infra.scaling_policy import START_MAX_TIERS, start_task_counts

# No metric delay; a task on a new instance runs 60 + 60 + 60 + 55 = 235 s after it is
# wanted (the odd 55 keeps task starts off minute boundaries, where datapoints are taken).
HAND_START_UP = StartUp(metric_delay=0, capacity=60, boot=60, image_pull=60, model_load=55,
                        instance_scale_in=900)


def tracking_only(**context: str) -> ScalingPolicy:
    """The stack's policy with the start alarm setting exactly 1 task, no idle alarm and
    no producer start: target tracking's own behaviour."""
    return dataclasses.replace(scaling_policy_of(fleet_config(**context)),
                               start_from_backlog=False, idle_datapoints=0,
                               producer_start=False)


def hand_run(images: int = 1000):
    config = fleet_config()
    return FleetSimulator(
        Workload.burst(images), engine=EngineSpeed(per_image_seconds=1.0),
        worker=WorkerPipeline(max_batch_size=8, prefetch_batches=2, prepare_seconds=0,
                              write_seconds=0),
        stop=stop_timings_of(config), policy=tracking_only(),
        start_up=HAND_START_UP).run()


def test_a_burst_from_zero_step_by_step() -> None:
    r = hand_run()
    steps = [(d.at, d.action, d.desired_before, d.desired_after) for d in r.decisions]
    assert steps == [
        # t=60: the first datapoint has 1000 visible, nothing running or wanted.
        (60, Action.START, 0, 1),
        # The task: instance launched 120, ready 180, running 295. Datapoints 300, 360
        # and 420 have a running task and a backlog far above 32: the third in a row
        # scales out to ceil(1 * 880 / 32) = 28, capped at maxTasks 4.
        (420, Action.SCALE_OUT, 1, 4),
        # The last result is at 815 (below); datapoints from 840 have no backlog, and
        # the 15th of them (840 + 14 * 60) scales in to ceil(4 * 0 / 32) = 0.
        (1680, Action.SCALE_IN, 4, 0),
    ]
    # 880 = 1000 - 15 batches of 8 finished by 415 (8 s each from 295).
    assert r.decisions[1].metric == 880
    assert r.decisions[2].metric == 0
    c = r.cold_start
    assert (c.start_decision, c.instance_launched, c.instance_ready, c.task_running) == (
        60, 120, 180, 295)
    assert c.first_result == 303  # the first batch of 8, 8 s
    # One task alone until the three new ones run at 420 + 235 = 655; by then it has
    # done 45 batches (360 jobs). The other 640 take 4 tasks 160 s: 655 + 160 = 815.
    assert r.drain_seconds == 815
    assert r.peak_tasks == 4
    # Billed: the first instance 120 -> 2580 (scale-in at 1680 + 900), the others
    # 480 -> 2580. Busy: 1000 images * 1 s. Start-up: 175 s per instance (launch ->
    # running). The tail is everything after the last result; nothing else is idle.
    hours = r.gpu_hours
    assert hours.billed * 3600 == pytest.approx(2460 + 3 * 2100)
    assert hours.busy * 3600 == pytest.approx(1000)
    assert hours.startup * 3600 == pytest.approx(4 * 175)
    assert hours.tail * 3600 == pytest.approx(4 * (2580 - 815))
    assert hours.waiting == pytest.approx(0, abs=1e-9)
    assert r.ended_at == 2580 and r.complete


def test_the_metric_delay_moves_every_decision() -> None:
    """CloudWatch 60 s late costs twice before the scale-out: the start comes at 120
    (the t=60 datapoint, read at 120), so the task runs at 120 + 235 = 355; the third
    datapoint with it running is taken at 480 and read at 540 (120 s later than
    without the delay)."""
    config = fleet_config()
    delayed = StartUp(**{**HAND_START_UP.__dict__, "metric_delay": 60})
    r = FleetSimulator(Workload.burst(1000), engine=EngineSpeed(per_image_seconds=1.0),
                       worker=WorkerPipeline(prepare_seconds=0, write_seconds=0),
                       stop=stop_timings_of(config), policy=tracking_only(),
                       start_up=delayed).run()
    assert [(d.at, d.action) for d in r.decisions[:2]] == [(120, Action.START),
                                                             (540, Action.SCALE_OUT)]


def point(at: float, backlog: int, running: int, desired: int) -> Datapoint:
    return Datapoint(at=at, visible=backlog, in_flight=0, running=running, desired=desired)


def test_target_tracking_needs_three_high_datapoints_in_a_row() -> None:
    scaler = Autoscaler(tracking_only(maxTasks="10"))
    assert scaler.observe(point(60, 100, 1, 1), desired=1, now=60) is None
    assert scaler.observe(point(120, 100, 1, 1), desired=1, now=120) is None
    # A datapoint at the target breaks the run.
    assert scaler.observe(point(180, 32, 1, 1), desired=1, now=180) is None
    assert scaler.observe(point(240, 100, 1, 1), desired=1, now=240) is None
    assert scaler.observe(point(300, 100, 1, 1), desired=1, now=300) is None
    decision = scaler.observe(point(360, 100, 1, 1), desired=1, now=360)
    assert decision is not None and decision.action is Action.SCALE_OUT
    assert decision.desired_after == 4  # ceil(1 * 100 / 32)


def test_no_running_task_means_no_value_and_breaks_the_run() -> None:
    scaler = Autoscaler(tracking_only())
    assert scaler.observe(point(60, 500, 1, 1), desired=1, now=60) is None
    assert scaler.observe(point(120, 500, 1, 1), desired=1, now=120) is None
    # running 0, desired 1 (a task is starting): no value, and no start either.
    assert scaler.observe(point(180, 500, 0, 1), desired=1, now=180) is None
    assert scaler.observe(point(240, 500, 1, 1), desired=1, now=240) is None


def test_the_start_alarm_sets_an_exact_count_and_cools_down() -> None:
    scaler = Autoscaler(scaling_policy_of(fleet_config()))
    first = scaler.observe(point(60, 5, 0, 0), desired=0, now=60)
    assert first is not None and (first.action, first.desired_after) == (Action.START, 1)
    # Were the desired count still 0 a minute later, the 120 s cooldown holds the
    # action back; after it, the action sets exactly 1 again (never +1).
    assert scaler.observe(point(120, 5, 0, 0), desired=0, now=120) is None
    again = scaler.observe(point(180, 5, 0, 0), desired=0, now=180)
    assert again is not None and again.desired_after == 1
    # Nothing waiting, or a task wanted: no start.
    assert scaler.observe(point(300, 0, 0, 0), desired=0, now=300) is None
    assert scaler.observe(point(360, 5, 0, 1), desired=1, now=360) is None


def test_scale_in_needs_fifteen_low_datapoints_and_respects_its_cooldown() -> None:
    scaler = Autoscaler(tracking_only(maxTasks="8"))
    decisions = [scaler.observe(point(60 * i, 40, 4, 4), desired=4, now=60 * i)
                 for i in range(1, 16)]
    # 40 / 4 = 10 per task, below 0.9 * 32: the 15th datapoint scales in to
    # ceil(4 * 10 / 32) = 2.
    assert decisions[:14] == [None] * 14
    assert decisions[14] is not None and decisions[14].action is Action.SCALE_IN
    assert decisions[14].desired_after == 2
    # Still low: 20 / 2 = 10 per task wants ceil(2 * 10 / 32) = 1, but not within the
    # 300 s scale-in cooldown.
    held = [scaler.observe(point(900 + 60 * i, 20, 2, 2), desired=2, now=900 + 60 * i)
            for i in range(1, 5)]
    assert held == [None] * 4
    later = scaler.observe(point(1200, 20, 2, 2), desired=2, now=1200)
    assert later is not None and later.desired_after == 1


def test_policy_numbers_are_the_stacks() -> None:
    """The planner's policy is what the CDK app synthesizes, for the defaults and for
    changed context (the same context goes to both)."""
    pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")
    from tests.support.infra_synth import synth

    for context in ({}, {"maxTasks": "8", "backlogPerTask": "16", "spot": "true"},
                    {"maxTasks": "64"}):
        config = fleet_config(**context)
        policy, stop = scaling_policy_of(config), stop_timings_of(config)
        s = synth(context)
        _, target = s.one("AWS::ApplicationAutoScaling::ScalableTarget")
        assert (target["MinCapacity"], target["MaxCapacity"]) == (policy.min_tasks,
                                                                  policy.max_tasks)
        policies = [r["Properties"] for r in
                    s.resources("AWS::ApplicationAutoScaling::ScalingPolicy").values()]
        (tracking,) = [p["TargetTrackingScalingPolicyConfiguration"] for p in policies
                       if p["PolicyType"] == "TargetTrackingScaling"]
        assert tracking["TargetValue"] == policy.backlog_per_task
        assert tracking["ScaleOutCooldown"] == policy.scale_out_cooldown
        assert tracking["ScaleInCooldown"] == policy.scale_in_cooldown
        steps = {p["StepScalingPolicyConfiguration"]["Cooldown"]:
                 p["StepScalingPolicyConfiguration"] for p in policies
                 if p["PolicyType"] == "StepScaling"}
        assert set(steps) == {policy.start_cooldown, policy.idle_cooldown}
        step = steps[policy.start_cooldown]
        # One ExactCapacity tier per start count: ceil(waiting / backlogPerTask) rounded
        # up to the next count, 1 to maxTasks.
        assert [a["ScalingAdjustment"] for a in step["StepAdjustments"]] == (
            start_task_counts(policy.max_tasks))
        assert [a["ScalingAdjustment"] for a in steps[policy.idle_cooldown][
            "StepAdjustments"]] == [policy.min_tasks]
        (idle,) = [a for a in s.alarms() if "Nothing waiting or in flight" in str(a)]
        assert idle["EvaluationPeriods"] == policy.idle_datapoints
        (alarm,) = [a for a in s.alarms() if "Waiting jobs with no worker" in str(a)]
        assert alarm["EvaluationPeriods"] == policy.start_evaluation_periods
        periods = {m["MetricStat"]["Period"] for m in alarm["Metrics"] if "MetricStat" in m}
        assert periods == {policy.start_period}
        assert float(s.env()["IMG2IMG_STOP_DEADLINE"]) == stop.stop_deadline


def test_above_twenty_tasks_the_start_rounds_up_to_twenty_tiers() -> None:
    """Application Auto Scaling takes 20 step adjustments per policy: with maxTasks 64
    the counts are 1 to 12 one by one, then further apart; a backlog gets the next count
    up, never fewer tasks than it needs, and one job still one task."""
    from capacity_planner.autoscaling import tasks_for_backlog

    counts = start_task_counts(64)
    assert len(counts) == START_MAX_TIERS and counts[0] == 1 and counts[-1] == 64
    assert counts == sorted(set(counts))
    policy = scaling_policy_of(fleet_config(maxTasks=64))
    for backlog in (1, 32, 33, 12 * 32, 12 * 32 + 1, 52 * 32 + 1, 10**6):
        need = min(64, -(-backlog // 32))
        got = tasks_for_backlog(policy, backlog)
        assert got in counts and got >= need, backlog
        assert got == min(c for c in counts if c >= need)
    assert tasks_for_backlog(policy, 1) == 1
    assert tasks_for_backlog(policy, 13 * 32) == 14  # 13 is not a count: the next up
