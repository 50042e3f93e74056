"""The tables of docs/scaling.md, from the capacity planner (no AWS, no GPU, seconds).

    PYTHONPATH=. python -m bench.scaling_tables > /tmp/scaling-tables.md

Every number comes from ``capacity_planner`` with the stack's policy and the assumptions
named in docs/scaling.md; change an assumption there and rerun this.
"""

from __future__ import annotations

import dataclasses

from capacity_planner.fleet_inputs import (
    EngineSpeed,
    SpotInterruptions,
    StartUp,
    WorkerPipeline,
)
from capacity_planner.outcome import SimulationResult
from capacity_planner.plan import PlanRequest, duration, make_plan
from capacity_planner.prices import ON_DEMAND_USD_PER_HOUR
from capacity_planner.requests import request_cost
from capacity_planner.simulator import FleetSimulator
from capacity_planner.stack_policy import (
    ScalingPolicy,
    fleet_config,
    scaling_policy_of,
    stop_timings_of,
)
from capacity_planner.workload import Workload

INSTANCE = "g5.xlarge"
PRICE = ON_DEMAND_USD_PER_HOUR[INSTANCE]


def previous_policy(config_policy: ScalingPolicy) -> ScalingPolicy:
    """The policy before the fast start: the start alarm sets 1 task, target tracking
    alone scales in, the capacity provider alone releases instances, no producer start,
    no warm pool."""
    return dataclasses.replace(config_policy, start_from_backlog=False, idle_datapoints=0,
                               release_instances_when_idle=False, producer_start=False,
                               warm_pool_size=0)


def drain_and_cost(variant: str) -> str:
    """``variant``: "previous", "deployed" (producer start, no warm pool) or "warm pool"
    (deployed, warmPoolSize = maxTasks)."""
    lines = ["| images | max tasks | drain | first result | GPU-hours billed (busy) | "
             "GPU above the busy floor | GPU $ per 1,000 | requests $ per 1,000 | "
             "$ per 1,000 images |", "|---|---|---|---|---|---|---|---|---|"]
    for images in (10_000, 100_000, 1_000_000):
        for tasks in (4, 16, 64):
            lines.append(drain_and_cost_row(variant, images, tasks))
    return "\n".join(lines)


def drain_and_cost_row(variant: str, images: int, tasks: int) -> str:
    """One row of ``drain_and_cost``."""
    pool = tasks if variant == "warm pool" else 0
    policy = scaling_policy_of(fleet_config(maxTasks=tasks, warmPoolSize=pool))
    if variant == "previous":
        policy = previous_policy(policy)
    r = _run(Workload.burst(images), policy)
    gpu = (r.cost(PRICE) or 0.0) * 1000 / images
    requests = request_cost(images).per_1000_images_usd
    return (f"| {images:,} | {tasks} | {duration(r.drain_seconds)} | "
            f"{duration(r.first_result_seconds)} | {r.gpu_hours.billed:,.1f} "
            f"({r.gpu_hours.busy:,.1f}) | "
            f"{r.gpu_hours.billed / r.gpu_hours.busy - 1:.1%} | ${gpu:.3f} | "
            f"${requests:.4f} | ${gpu + requests:.3f} |")


def cold_start(warm_pool: int = 0) -> str:
    plan = make_plan(PlanRequest(images=1000, instance_type=INSTANCE,
                                 warm_pool_size=warm_pool))
    c, s = plan.result.cold_start, plan.start_up
    booted = ("stopped warm-pool instance started, ECS agent registered" if warm_pool
              else "instance booted, ECS agent registered, driver checked")
    pulled = ("worker image already on the instance" if warm_pool
              else "worker image pulled")
    steps = [
        ("jobs sent; the producer's start call sets the tasks and instances the backlog "
         "needs", c.start_decision),
        ("the GPU group launches the instance(s)", c.instance_launched),
        (booted, c.instance_ready),
        (pulled, (c.instance_ready or 0) + (0 if warm_pool else s.image_pull)),
        ("model loaded: the worker takes jobs", c.task_running),
        ("first result (prepare, one batch of 8, write)", c.first_result),
    ]
    lines = ["| step | at |", "|---|---|"]
    lines += [f"| {name} | {duration(at)} |" for name, at in steps]
    return "\n".join(lines)


def _run(workload: Workload, policy: ScalingPolicy, start_up: StartUp | None = None,
         per_image: float = 1.0) -> SimulationResult:
    config = fleet_config()
    return FleetSimulator(workload, engine=EngineSpeed(per_image_seconds=per_image),
                          worker=WorkerPipeline(), stop=stop_timings_of(config),
                          policy=policy, start_up=start_up or StartUp(),
                          spot=SpotInterruptions()).run()


def policy_what_ifs() -> str:
    """The same workloads under changed policies (the simulator takes any policy)."""
    base = scaling_policy_of(fleet_config())
    previous = previous_policy(base)
    trickle = Workload(3600, rate_per_second=1.0)  # a steady hour, one image a second
    burst = Workload.burst(10_000)
    rows = [
        ("a steady hour at 1 image/s", "the stack as deployed", trickle, base, None),
        ("", "the previous policy (start alarm, target tracking)", trickle, previous,
         None),
        ("", "one task always warm (min tasks 1)", trickle,
         dataclasses.replace(base, min_tasks=1), None),
        ("", "a warm pool of 4", trickle,
         dataclasses.replace(base, warm_pool_size=4), None),
        ("", "no producer start (the start alarm)", trickle,
         dataclasses.replace(base, producer_start=False), None),
        ("a burst of 10,000", "the stack as deployed", burst, base, None),
        ("", "the previous policy (start alarm, target tracking)", burst, previous, None),
        ("", "a warm pool of 4", burst, dataclasses.replace(base, warm_pool_size=4), None),
        ("", "no producer start (the start alarm)", burst,
         dataclasses.replace(base, producer_start=False), None),
        ("", "idle alarm after 3 empty minutes (not 1)", burst,
         dataclasses.replace(base, idle_datapoints=3), None),
        ("", "maxTasks 16", burst, dataclasses.replace(base, max_tasks=16), None),
    ]
    lines = ["| workload | policy | drain | p50 / p99 latency | GPU-hours billed (busy) | "
             "$ per 1,000 images |", "|---|---|---|---|---|---|"]
    for label, name, workload, policy, start_up in rows:
        r = _run(workload, policy, start_up)
        # A warm task is billed here for the run only (docs/scaling.md says so).
        billed = r.gpu_hours.billed
        per_1000 = 1000 * (r.cost(PRICE) or 0.0) / workload.images
        lines.append(f"| {label} | {name} | {duration(r.drain_seconds)} | "
                     f"{duration(r.latency_p50)} / {duration(r.latency_p99)} | "
                     f"{billed:.2f} ({r.gpu_hours.busy:.2f}) | ${per_1000:.3f} |")
    return "\n".join(lines)


def main() -> None:
    for variant in ("deployed", "warm pool", "previous"):
        print(f"## Drain and cost, {variant} (g5.xlarge on demand, 1.0 s/image assumed)\n")
        print(drain_and_cost(variant))
        print()
    print("## Cold start, no warm pool\n")
    print(cold_start())
    print("\n## Cold start, warm pool\n")
    print(cold_start(warm_pool=4))
    print("\n## Policy what-ifs\n")
    print(policy_what_ifs())


if __name__ == "__main__":
    main()
