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


def drain_and_cost() -> str:
    lines = ["| images | max tasks | drain | first result | GPU-hours billed (busy) | "
             "cost | $ per 1,000 images |", "|---|---|---|---|---|---|---|"]
    for images in (10_000, 100_000, 1_000_000):
        for tasks in (4, 16, 64):
            plan = make_plan(PlanRequest(images=images, max_tasks=tasks,
                                         instance_type=INSTANCE))
            r, cost = plan.result, plan.cost(plan.on_demand_price)
            assert cost is not None
            lines.append(
                f"| {images:,} | {tasks} | {duration(r.drain_seconds)} | "
                f"{duration(r.first_result_seconds)} | {r.gpu_hours.billed:,.1f} "
                f"({r.gpu_hours.busy:,.1f}) | ${cost['total_usd']:,.2f} | "
                f"${cost['per_1000_images_usd']:.3f} |")
    return "\n".join(lines)


def cold_start() -> str:
    plan = make_plan(PlanRequest(images=1000, instance_type=INSTANCE))
    c, s = plan.result.cold_start, plan.start_up
    steps = [
        ("first datapoint with jobs waiting (end of the first minute)", 60.0),
        ("the start alarm reads it (metric delay) and sets 1 task", c.start_decision),
        ("capacity provider launches an instance", c.instance_launched),
        ("instance booted, ECS agent registered, driver checked", c.instance_ready),
        ("worker image pulled", (c.instance_ready or 0) + s.image_pull),
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
    trickle = Workload(3600, rate_per_second=1.0)  # a steady hour, one image a second
    burst = Workload.burst(10_000)
    rows = [
        ("a steady hour at 1 image/s", "the stack as deployed", trickle, base, None),
        ("", "one task always warm (min tasks 1)", trickle,
         dataclasses.replace(base, min_tasks=1), None),
        ("", "backlogPerTask 8", trickle,
         dataclasses.replace(base, backlog_per_task=8), None),
        ("", "instance image and model cached (pull 0, load 20 s)", trickle, base,
         StartUp(image_pull=0, model_load=20)),
        ("a burst of 10,000", "the stack as deployed", burst, base, None),
        ("", "the start alarm sets 4 tasks, not 1", burst,
         dataclasses.replace(base, start_tasks=4), None),
        ("", "scale in after 3 empty minutes (not 15)", burst,
         dataclasses.replace(base, low_datapoints=3), None),
        ("", "the above, and instances go 2 min after their task", burst,
         dataclasses.replace(base, low_datapoints=3),
         StartUp(instance_scale_in=120)),
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
    print("## Drain and cost (g5.xlarge on demand, 1.0 s/image assumed)\n")
    print(drain_and_cost())
    print("\n## Cold start\n")
    print(cold_start())
    print("\n## Policy what-ifs\n")
    print(policy_what_ifs())


if __name__ == "__main__":
    main()
