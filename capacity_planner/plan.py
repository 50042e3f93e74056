"""A capacity plan: the stack's policy and a workload, simulated, priced and explained.

``make_plan`` fills what the request leaves out from the stack (``infra``'s defaults)
and the worker (its settings' defaults); what is neither measured nor configured is a
named assumption, listed in the plan itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from capacity_planner.fleet_inputs import (
    ASSUMED_SECONDS_PER_IMAGE,
    EngineSpeed,
    SpotInterruptions,
    StartUp,
    WorkerPipeline,
)
from capacity_planner.outcome import SimulationResult
from capacity_planner.prices import HourlyPrice, list_price, price_for
from capacity_planner.requests import RequestCost, request_cost
from capacity_planner.simulator import FleetSimulator
from capacity_planner.stack_policy import (
    ScalingPolicy,
    context_from,
    fleet_config,
    scaling_policy_of,
    stop_timings_of,
)
from capacity_planner.workload import Workload

# Spot reclaims per instance-hour when none is given: an assumption (AWS publishes
# interruption frequencies only as monthly bands, per type and region, in the Spot
# Instance Advisor).
ASSUMED_SPOT_INTERRUPTIONS_PER_HOUR = 0.05


@dataclass(frozen=True)
class PlanRequest:
    """What to plan; None takes the stack's, the worker's or the assumed value."""

    images: int
    rate_per_second: float | None = None
    seconds_per_image: float | None = None
    batch_size: int | None = None
    max_tasks: int | None = None
    backlog_per_task: int | None = None
    instance_type: str | None = None
    spot: bool = False
    price_per_hour: float | None = None
    interruptions_per_hour: float | None = None
    warm_pool_size: int | None = None
    producer_start: bool = True
    start_up: StartUp = field(default_factory=StartUp)


@dataclass(frozen=True)
class Plan:
    workload: Workload
    instance_type: str
    spot: bool
    engine: EngineSpeed
    worker: WorkerPipeline
    policy: ScalingPolicy
    start_up: StartUp
    interruptions_per_hour: float
    result: SimulationResult
    on_demand_price: HourlyPrice | None
    spot_price: HourlyPrice | None
    requests: RequestCost
    assumptions: tuple[str, ...]

    # -- the numbers a reader checks by hand ------------------------------------------

    @property
    def seconds_per_image(self) -> float:
        """Engine seconds per image in a full batch."""
        size = self.worker.max_batch_size
        return self.engine.batch_seconds(size) / size

    @property
    def gpu_seconds_at_full_fleet(self) -> float:
        """images * seconds per image / max tasks: the drain with every task busy."""
        return self.workload.images * self.seconds_per_image / self.policy.max_tasks

    def components(self) -> dict[str, float]:
        """Where the drain time goes: cold start (first job -> first worker taking
        jobs), GPU time at the full fleet, the arrivals' own span, and scale-out (the
        rest: fewer tasks than the maximum while the fleet grows, and the last batches)."""
        r = self.result
        cold = r.cold_start.task_running or 0.0
        gpu = self.gpu_seconds_at_full_fleet
        arrivals = self.workload.last_arrival
        drain = r.drain_seconds or r.ended_at
        return {"cold_start": cold, "gpu_time": gpu, "arrivals": arrivals,
                "scale_out": max(0.0, drain - cold - max(gpu, arrivals))}

    def dominated_by(self) -> str:
        parts = self.components()
        return max(parts, key=parts.__getitem__).replace("_", " ")

    def cost(self, price: HourlyPrice | None) -> dict[str, Any] | None:
        if price is None:
            return None
        gpu = self.result.gpu_hours.billed * price.usd
        floor = self.result.gpu_hours.busy * price.usd
        total = gpu + self.requests.total_usd
        return {"usd_per_hour": price.usd, "source": price.source, "gpu_usd": gpu,
                "requests_usd": self.requests.total_usd, "total_usd": total,
                "per_1000_images_usd": 1000 * total / self.workload.images,
                "busy_gpu_floor_usd": floor,
                "gpu_above_floor": gpu / floor - 1 if floor else None}

    # -- output -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        hours = r.gpu_hours
        return {
            "inputs": {
                "images": self.workload.images,
                "rate_per_second": self.workload.rate_per_second,
                "seconds_per_image": self.seconds_per_image,
                "batch_size": self.worker.max_batch_size,
                "prefetch_batches": self.worker.prefetch_batches,
                "max_tasks": self.policy.max_tasks,
                "backlog_per_task": self.policy.backlog_per_task,
                "warm_pool_size": self.policy.warm_pool_size,
                "producer_start": self.policy.producer_start,
                "instance_type": self.instance_type,
                "spot": self.spot,
                "interruptions_per_hour": self.interruptions_per_hour,
            },
            "drain_seconds": r.drain_seconds,
            "first_result_seconds": r.first_result_seconds,
            "latency_seconds": {"p50": r.latency_p50, "p99": r.latency_p99,
                                "max": r.latency_max},
            "steady_state": {
                "jobs_per_second_per_task": 1 / self.seconds_per_image,
                "jobs_per_second_at_max_tasks": self.policy.max_tasks / self.seconds_per_image,
                "gpu_seconds_at_full_fleet": self.gpu_seconds_at_full_fleet,
            },
            "components_seconds": self.components(),
            "dominated_by": self.dominated_by(),
            "gpu_hours": {"billed": hours.billed, "busy": hours.busy, "idle": hours.idle,
                          "startup": hours.startup, "waiting": hours.waiting,
                          "tail_after_last_result": hours.tail,
                          "warm_pool_refill": hours.warm_pool_refill,
                          "lost_to_interruptions": hours.lost_to_interruptions},
            "cost": {"on_demand": self.cost(self.on_demand_price),
                     "spot": self.cost(self.spot_price)},
            "requests": self.requests.to_dict(),
            "cold_start_seconds": asdict(r.cold_start),
            "fleet": {"peak_tasks": r.peak_tasks, "batches": r.batches,
                      "interruptions": r.interruptions, "jobs_rerun": r.jobs_rerun,
                      "fleet_empty_at_seconds": r.ended_at, "complete": r.complete},
            "decisions": [d.line() for d in r.decisions],
            "policy": asdict(self.policy),
            "start_up_seconds": asdict(self.start_up),
            "assumptions": list(self.assumptions),
        }

    def text(self) -> str:
        r, hours = self.result, self.result.gpu_hours
        w = self.workload
        arrival = ("at once" if w.rate_per_second is None
                   else f"at {w.rate_per_second:g}/s")
        capacity = "Spot" if self.spot else "on-demand"
        lines = [
            f"Plan: {w.images:,} images {arrival}, {self.seconds_per_image:g} s/image, "
            f"batch {self.worker.max_batch_size}, up to {self.policy.max_tasks} tasks on "
            f"{self.instance_type} ({capacity})",
            f"  drain          {duration(r.drain_seconds)} "
            f"(first result after {duration(r.first_result_seconds)})",
            f"  job latency    p50 {duration(r.latency_p50)}, p99 {duration(r.latency_p99)}",
            f"  GPU-hours      {hours.billed:.2f} billed: {hours.busy:.2f} busy, "
            f"{hours.idle:.2f} idle (start-up {hours.startup:.2f}, waiting "
            f"{hours.waiting:.2f}, after the last result {hours.tail:.2f}"
            + (f", warming the pool {hours.warm_pool_refill:.2f}"
               if hours.warm_pool_refill else "")
            + (f", lost to interruptions {hours.lost_to_interruptions:.2f}"
               if hours.lost_to_interruptions else "") + ")",
            f"  requests       ${self.requests.total_usd:,.2f} = "
            f"${self.requests.per_1000_images_usd:.4f} per 1,000 images (S3, SQS, SNS; "
            f"{self.requests.source})",
        ]
        for label, price in (("on demand", self.on_demand_price), ("Spot", self.spot_price)):
            cost = self.cost(price)
            if cost is None:
                lines.append(f"  cost, {label:9s} no price for {self.instance_type}: pass "
                             f"--price-per-hour" + (" with --spot" if label == "Spot" else ""))
            else:
                lines.append(f"  cost, {label:9s} ${cost['total_usd']:,.2f} = "
                             f"${cost['per_1000_images_usd']:.3f} per 1,000 images: GPU "
                             f"${cost['gpu_usd']:,.2f} ({cost['gpu_above_floor']:.1%} above "
                             f"the busy-GPU floor) at {price.line()}, requests "
                             f"${cost['requests_usd']:,.2f}")
        c = r.cold_start
        if c.start_decision is not None:
            starter = "producer start" if self.policy.producer_start else "start alarm"
            pool = " (warm pool)" if self.policy.warm_pool_size else ""
            lines.append(
                f"  cold start     first worker after {duration(c.task_running)}: "
                f"{starter} {duration(c.start_decision)}, instance{pool} launched "
                f"{duration(c.instance_launched)}, ready {duration(c.instance_ready)}, "
                f"image + model {duration(_minus(c.task_running, c.instance_ready))}")
        parts = self.components()
        lines.append(f"  dominated by   {self.dominated_by()} (cold start "
                     f"{duration(parts['cold_start'])}, scale-out "
                     f"{duration(parts['scale_out'])}, GPU time at {self.policy.max_tasks} "
                     f"tasks {duration(parts['gpu_time'])}"
                     + (f", arrivals {duration(parts['arrivals'])}"
                        if w.rate_per_second else "") + ")")
        if r.interruptions:
            lines.append(f"  Spot           {r.interruptions} interruptions, "
                         f"{r.jobs_rerun} jobs run again")
        lines.append("  scaling        " + ("; ".join(d.line() for d in r.decisions[:6])
                                            or "no decision"))
        lines += [f"  assumption:    {a}" for a in self.assumptions]
        return "\n".join(lines)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def make_plan(request: PlanRequest) -> Plan:
    config = fleet_config(**context_from({
        "maxTasks": request.max_tasks, "backlogPerTask": request.backlog_per_task,
        "spot": request.spot, "warmPoolSize": request.warm_pool_size,
        "instanceTypes": [request.instance_type] if request.instance_type else None}))
    instance_type = config.instance_types[0]
    assumptions: list[str] = []
    seconds = request.seconds_per_image
    if seconds is None:
        seconds = ASSUMED_SECONDS_PER_IMAGE
        assumptions.append(f"{seconds:g} s of GPU per image (SD 1.5, 512 px, 18 denoising "
                           "steps, A10G class): not measured, see docs/scaling.md")
    worker = WorkerPipeline(**({"max_batch_size": request.batch_size}
                               if request.batch_size else {}))
    rate = request.interruptions_per_hour
    if rate is None:
        rate = ASSUMED_SPOT_INTERRUPTIONS_PER_HOUR if request.spot else 0.0
        if request.spot:
            assumptions.append(f"{rate:g} Spot interruptions per instance-hour")
    assumptions.append("start-up times (metric delay, capacity, boot, image pull, model "
                       "load, instance scale-in, start call, warm resume, instance "
                       "release) are assumptions: docs/scaling.md")
    workload = Workload(request.images, rate_per_second=request.rate_per_second)
    engine = EngineSpeed(per_image_seconds=seconds)
    policy = scaling_policy_of(config, producer_start=request.producer_start)
    result = FleetSimulator(workload, engine=engine, worker=worker,
                            stop=stop_timings_of(config), policy=policy,
                            start_up=request.start_up,
                            spot=SpotInterruptions(rate)).run()
    given = request.price_per_hour
    return Plan(
        workload=workload, instance_type=instance_type, spot=request.spot,
        engine=engine, worker=worker, policy=policy, start_up=request.start_up,
        interruptions_per_hour=rate, result=result,
        on_demand_price=(price_for(instance_type, spot=False, given_per_hour=given)
                         if not request.spot else list_price(instance_type, spot=False)),
        spot_price=(price_for(instance_type, spot=True, given_per_hour=given)
                    if request.spot else list_price(instance_type, spot=True)),
        requests=request_cost(request.images),
        assumptions=tuple(assumptions))
