"""The planner's fast paths, decision by decision: the producer's start call, the start
tiers, the warm pool, the idle alarm and the instances it releases; and the targets the
deployed policy is held to (docs/scaling.md).

Start-up times are chosen so every number can be derived by hand in the comments.
"""

from __future__ import annotations

import pytest

from capacity_planner.autoscaling import Action, Autoscaler, Datapoint, producer_start
from capacity_planner.fleet_inputs import EngineSpeed, StartUp, WorkerPipeline
from capacity_planner.plan import PlanRequest, make_plan
from capacity_planner.requests import REQUESTS_PER_JOB, USD_PER_REQUEST, request_cost
from capacity_planner.simulator import FleetSimulator
from capacity_planner.stack_policy import fleet_config, scaling_policy_of, stop_timings_of
from capacity_planner.workload import Workload
from tests.support.paths import REPO

HAND = StartUp(metric_delay=60, capacity=60, boot=60, image_pull=60, model_load=55,
               instance_scale_in=900, start_call=5, warm_resume=30, instance_release=60)


def run(workload: Workload, **context: str):
    config = fleet_config(**context)
    return FleetSimulator(
        workload, engine=EngineSpeed(per_image_seconds=1.0),
        worker=WorkerPipeline(max_batch_size=8, prefetch_batches=2, prepare_seconds=0,
                              write_seconds=0),
        stop=stop_timings_of(config), policy=scaling_policy_of(config), start_up=HAND).run()


def test_the_producer_starts_the_backlogs_need_and_the_idle_alarm_ends_it() -> None:
    r = run(Workload.burst(100))
    # t=5: the start call: ceil(100 / 32) = 4 tasks, and the group launches 4 instances
    # at once (no capacity-provider reaction). The t=240 datapoint is the first with
    # nothing visible or in flight; read at 300 it sets 0 tasks and 0 instances.
    assert [(d.at, d.action, d.desired_before, d.desired_after) for d in r.decisions] == [
        (5, Action.PRODUCER_START, 0, 4), (300, Action.IDLE, 4, 0)]
    c = r.cold_start
    # Launched 5, booted 65, image and model 60 + 55: running at 180, first batch 188.
    assert (c.start_decision, c.instance_launched, c.instance_ready, c.task_running,
            c.first_result) == (5, 5, 65, 180, 188)
    # 100 jobs = 12 batches of 8 and one of 4; three tasks run 3 batches (to 204), one
    # runs 3 and the last 4 jobs: 204 + 4 = 208.
    assert r.drain_seconds == 208 and r.batches == 13
    # Each instance: launched 5, released 60 s after the idle decision: 360.
    hours = r.gpu_hours
    assert hours.billed * 3600 == pytest.approx(4 * (360 - 5))
    assert hours.startup * 3600 == pytest.approx(4 * (180 - 5))
    assert hours.tail * 3600 == pytest.approx(4 * (360 - 208))
    assert hours.busy * 3600 == pytest.approx(100)
    assert r.ended_at == 360 and r.complete


def test_the_warm_pool_skips_boot_and_pull_and_bills_the_refill() -> None:
    r = run(Workload.burst(100), warmPoolSize="4")
    c = r.cold_start
    # Resumed at 5, registered at 35 (warm_resume 30), model 55: running at 90.
    assert (c.instance_launched, c.instance_ready, c.task_running, c.first_result) == (
        5, 35, 90, 98)
    # Drain 90 + 28 = 118; the t=120 datapoint is empty, read at 180: released at 240.
    assert r.drain_seconds == 118
    assert [(d.at, d.action) for d in r.decisions] == [(5, Action.PRODUCER_START),
                                                       (180, Action.IDLE)]
    hours = r.gpu_hours
    # The pool warms a replacement for each instance taken: boot + pull = 120 s each.
    assert hours.warm_pool_refill * 3600 == pytest.approx(4 * 120)
    assert hours.billed * 3600 == pytest.approx(4 * (240 - 5) + 4 * 120)


def test_a_busy_task_is_never_scaled_in() -> None:
    """The idle decision reads a datapoint a minute old: jobs sent meanwhile are being
    worked on when it comes. The busy task keeps them (ECS task protection), finishes,
    and nothing is delivered twice."""
    r = run(Workload.recorded([(0, 8), (250, 40)]))
    # t=5: 8 jobs start 1 task (running 180, done 188). The t=240 datapoint is empty;
    # 40 jobs arrive at 250 and the running task takes 16 of them; the start call at
    # 255 sees 24 visible + 16 in flight = 40 and raises to ceil(40 / 32) = 2. At 300
    # the idle decision sets 0: the new task (its instance still booting) goes, the busy
    # one works on and takes the rest: 40 jobs, 5 batches, 250 -> 290.
    assert [(d.at, d.action, d.desired_after) for d in r.decisions] == [
        (5, Action.PRODUCER_START, 1), (255, Action.PRODUCER_START, 2),
        (300, Action.IDLE, 0)]
    assert r.completed == 48 and r.jobs_rerun == 0
    assert r.drain_seconds == 290
    assert r.complete


def test_the_start_call_only_raises() -> None:
    policy = scaling_policy_of(fleet_config())
    assert producer_start(policy, 0, desired=0, now=0) is None
    assert producer_start(policy, 10, desired=1, now=0) is None  # 1 wanted, 1 there
    assert producer_start(policy, 10, desired=3, now=0) is None  # never down
    raised = producer_start(policy, 65, desired=1, now=7)
    assert raised is not None and (raised.desired_before, raised.desired_after) == (1, 3)
    assert producer_start(policy, 10**6, desired=0, now=0).desired_after == 4  # maxTasks


def test_the_idle_alarm_needs_an_empty_minute_with_tasks_wanted() -> None:
    scaler = Autoscaler(scaling_policy_of(fleet_config()))

    def point(at: float, visible: int, in_flight: int, desired: int) -> Datapoint:
        return Datapoint(at=at, visible=visible, in_flight=in_flight,
                         running=desired, desired=desired)

    # Something in flight (a worker busy with it) is not idle.
    assert scaler.observe(point(60, 0, 5, 2), desired=2, now=60) is None
    idle = scaler.observe(point(120, 0, 0, 2), desired=2, now=120)
    assert idle is not None and (idle.action, idle.desired_after) == (Action.IDLE, 0)
    # Nothing wanted: nothing to do.
    assert scaler.observe(point(180, 0, 0, 0), desired=0, now=180) is None


@pytest.mark.parametrize(("warm_pool", "limit"), [(None, 5 * 60), ("4", 3 * 60)])
def test_first_result_from_an_empty_fleet(warm_pool: str | None, limit: float) -> None:
    """The targets with the default assumptions: at most 5 minutes without a warm
    pool, at most 3 with one."""
    plan = make_plan(PlanRequest(images=1000, instance_type="g5.xlarge",
                                 warm_pool_size=int(warm_pool) if warm_pool else None))
    assert plan.result.first_result_seconds <= limit


@pytest.mark.parametrize(("images", "limit"), [(10_000, 0.15), (1_000_000, 0.03)])
def test_gpu_cost_above_the_busy_floor(images: int, limit: float) -> None:
    """10,000 images on 4 tasks sit exactly on their target: 10,000 busy seconds, and
    each instance bills 240 s of start-up (boot, pull, model) and 135 s on average
    after its work (to the empty datapoint, read a minute later, released a minute after
    that): 4 x 375 = 1,500 s, 15 %. (The 1e-9 is float rounding of that exact 15 %.)"""
    plan = make_plan(PlanRequest(images=images, instance_type="g5.xlarge"))
    cost = plan.cost(plan.on_demand_price)
    assert cost is not None and cost["gpu_above_floor"] <= limit + 1e-9


def test_request_costs_come_from_the_one_table() -> None:
    cost = request_cost(1000)
    # 3 1/3 PUT-class at $0.005/1000 and 1.05 GET-class at $0.0004/1000 per job: the
    # overlap bench's counts (docs/benchmarks.md).
    assert REQUESTS_PER_JOB.s3_put == pytest.approx(3 + 1 / 3)
    assert REQUESTS_PER_JOB.s3_get == pytest.approx(1.05)
    assert cost.usd.s3_put == pytest.approx(10 / 3 * 0.005)
    assert cost.usd.s3_get == pytest.approx(1.05 * 0.0004)
    assert cost.total_usd == pytest.approx(1000 * sum(
        getattr(REQUESTS_PER_JOB, k) * getattr(USD_PER_REQUEST, k)
        for k in ("s3_put", "s3_get", "sqs", "sns")))
    assert cost.per_1000_images_usd == pytest.approx(cost.total_usd)


def test_docs_scaling_gives_the_planners_figures() -> None:
    """docs/scaling.md's tables come from bench/scaling_tables.py; these rows (the
    targets' rows and both cold starts) are recomputed here and must be in the doc."""
    from bench.scaling_tables import cold_start, drain_and_cost_row

    doc = (REPO / "docs" / "scaling.md").read_text()
    rows = [drain_and_cost_row(variant, 10_000, 4)
            for variant in ("deployed", "warm pool", "previous")]
    rows += [drain_and_cost_row("deployed", 1_000_000, 4)]
    for table in (cold_start(), cold_start(warm_pool=4)):
        rows += table.splitlines()[2:]
    missing = [row for row in rows if row not in doc]
    assert missing == []
