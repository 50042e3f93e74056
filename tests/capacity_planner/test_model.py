"""The planner's model of a worker (prefetch, batching, fill wait), of Spot reclaims and
of workloads, on fleets small enough to work out by hand; and the worker numbers it
restates, kept equal to the worker's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from capacity_planner import fleet_inputs
from capacity_planner.fleet_inputs import (
    EngineSpeed,
    SpotInterruptions,
    StartUp,
    WorkerPipeline,
)
from capacity_planner.outcome import weighted_percentile
from capacity_planner.simulator import FleetSimulator
from capacity_planner.stack_policy import StopTimings
from capacity_planner.workload import Workload

STOP = StopTimings(stop_deadline=70, spot_notice=120, spot_drain_lead=30)


def fixed(workload: Workload, tasks: int, *, batch: int = 4, prefetch: int = 2,
          engine: EngineSpeed | None = None, prepare: float = 0.0, write: float = 0.0,
          spot: SpotInterruptions | None = None, start_up: StartUp | None = None):
    return FleetSimulator(
        workload, engine=engine or EngineSpeed(per_image_seconds=0, per_batch_seconds=1.0),
        worker=WorkerPipeline(max_batch_size=batch, prefetch_batches=prefetch,
                              prepare_seconds=prepare, write_seconds=write),
        stop=STOP, spot=spot, start_up=start_up, warm_tasks=tasks).run()


def test_full_batches_on_a_fixed_fleet_take_rounds_of_one_batch_time() -> None:
    # 96 jobs, 3 workers, batches of 4 at 1 s each: 8 rounds.
    r = fixed(Workload.burst(96), 3)
    assert r.drain_seconds == 8.0 and r.batches == 24 and r.completed == 96
    assert r.first_result_seconds == 1.0
    assert r.gpu_hours.busy * 3600 == pytest.approx(24.0)


def test_plumbing_adds_once_at_each_end() -> None:
    # Prepare and write overlap the engine except for the first job and the last.
    r = fixed(Workload.burst(96), 3, prepare=0.2, write=0.3)
    assert r.drain_seconds == pytest.approx(0.2 + 8.0 + 0.3)


def test_a_partial_last_batch() -> None:
    r = fixed(Workload.burst(10), 1)
    assert r.batches == 3 and r.drain_seconds == 3.0  # 4 + 4 + 2


def test_prefetch_decides_who_holds_the_tail() -> None:
    """9 jobs, 2 workers, batch 4. Holding one batch ahead, each takes 4, and one takes
    the ninth when its batch starts: 2 rounds. Holding three batches ahead, the first
    receive takes all 9 (up to 10 per receive) and the other worker gets nothing."""
    assert fixed(Workload.burst(9), 2, prefetch=1).drain_seconds == 2.0
    assert fixed(Workload.burst(9), 2, prefetch=3).drain_seconds == 3.0


def test_a_partial_batch_waits_for_jobs_still_being_prepared() -> None:
    # Two jobs at 0 (ready at 0.05) and two at 0.02 (ready at 0.07): at 0.05 two are
    # still being prepared, so the engine waits (up to 0.25 s) and runs all 4 at 0.07.
    waits = fixed(Workload.recorded([(0, 2), (0.02, 2)]), 1, prepare=0.05)
    assert waits.batches == 1 and waits.drain_seconds == pytest.approx(1.07)
    # The second pair arrives after the first is ready: nothing is being prepared, so
    # the first pair runs at once and the second after it.
    no_wait = fixed(Workload.recorded([(0, 2), (0.1, 2)]), 1, prepare=0.05)
    assert no_wait.batches == 2 and no_wait.drain_seconds == pytest.approx(2.05)


def test_latency_percentiles_count_every_job() -> None:
    r = fixed(Workload.burst(96), 3)
    # Rounds end at 1..8 s with 12 jobs each: the median job is done after 4 s.
    assert r.latency_p50 == 4.0 and r.latency_p99 == 8.0 and r.latency_max == 8.0
    assert weighted_percentile([(1.0, 1), (2.0, 3)], 0.25) == 1.0
    assert weighted_percentile([(1.0, 1), (2.0, 3)], 0.26) == 2.0
    assert weighted_percentile([], 0.5) is None


@pytest.mark.parametrize("batch_seconds, lost", [(8.0, False), (100.0, True)])
def test_spot_reclaims_lose_no_job_and_run_some_again(batch_seconds: float,
                                                      lost: bool) -> None:
    """Reclaimed often (seeded), a fixed fleet still finishes every job exactly once. A
    batch that fits the 70 s stop deadline ends normally; a 100 s batch is released."""
    engine = EngineSpeed(per_image_seconds=batch_seconds / 8)
    r = fixed(Workload.burst(400), 2, batch=8, engine=engine,
              spot=SpotInterruptions(per_instance_hour=20.0, seed=7),
              start_up=StartUp(capacity=10, boot=10, image_pull=10, model_load=10))
    assert r.interruptions > 0 and r.jobs_rerun > 0
    assert r.completed == 400
    # Busy time counts completed batches only: exactly 400 images' worth.
    assert r.gpu_hours.busy * 3600 == pytest.approx(400 * batch_seconds / 8)
    assert (r.gpu_hours.lost_to_interruptions > 0) is lost


def test_workload_chunks_add_up() -> None:
    assert list(Workload.burst(5).chunks()) == [(0.0, 5)]
    steady = Workload(10, rate_per_second=4)
    # Job j at j / 4 s, chunked per second: 4, 4, 2.
    assert list(steady.chunks()) == [(0.0, 4), (1.0, 4), (2.0, 2)]
    assert steady.last_arrival == 2.0
    slow = Workload(3, rate_per_second=0.5)
    assert list(slow.chunks()) == [(0.0, 1), (2.0, 1), (4.0, 1)]
    assert slow.last_arrival == 4.0
    with pytest.raises(ValueError):
        Workload(3, arrivals=((0.0, 2),))


def test_a_million_jobs_simulate_in_seconds() -> None:
    import time

    started = time.perf_counter()
    r = fixed(Workload.burst(1_000_000), 16, batch=8,
              engine=EngineSpeed(per_image_seconds=1.0))
    assert r.completed == 1_000_000
    assert r.drain_seconds == pytest.approx(1_000_000 / 16, rel=1e-3)
    assert time.perf_counter() - started < 20


def test_the_worker_numbers_restated_are_the_workers() -> None:
    from worker.fleet.sqs_queue import MAX_RECEIVE_MESSAGES
    from worker.job_pipeline import BATCH_FILL_WAIT_SECONDS
    from worker.settings import WorkerSettings

    fields = WorkerSettings.model_fields
    assert fields["max_batch_size"].default == fleet_inputs.WORKER_MAX_BATCH_SIZE
    assert fields["prefetch_batches"].default == fleet_inputs.WORKER_PREFETCH_BATCHES
    assert fleet_inputs.MAX_RECEIVE_MESSAGES == MAX_RECEIVE_MESSAGES
    assert fleet_inputs.BATCH_FILL_WAIT_SECONDS == BATCH_FILL_WAIT_SECONDS


def test_the_planner_imports_no_torch_boto3_cdk_or_worker() -> None:
    code = ("import sys, capacity_planner.plan, producer.cli; "
            "bad = [m for m in ('torch', 'PIL', 'boto3', 'botocore', 'aws_cdk', 'worker') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_new_jobs_go_to_the_waiting_workers_in_turn() -> None:
    """Two jobs a second into 4 idle workers of 1 s per image: each second's pair goes
    to the next worker (one receive), which runs it as a batch of 2 in 2 s; no worker
    falls behind, so every job takes prepare + 2 s + write."""
    r = fixed(Workload(40, rate_per_second=2), 4, batch=8,
              engine=EngineSpeed(per_image_seconds=1.0), prepare=0.3, write=0.3)
    assert r.latency_p50 == pytest.approx(2.6) and r.latency_max == pytest.approx(2.6)


def test_a_minimum_of_tasks_is_a_warm_pool() -> None:
    import dataclasses

    from capacity_planner.stack_policy import fleet_config, scaling_policy_of

    warm = dataclasses.replace(scaling_policy_of(fleet_config()), min_tasks=1)
    r = FleetSimulator(Workload.burst(8), engine=EngineSpeed(per_image_seconds=1.0),
                       worker=WorkerPipeline(prepare_seconds=0.3, write_seconds=0.3),
                       stop=STOP, policy=warm).run()
    assert r.cold_start.start_decision is None  # nothing to start: it already runs
    assert r.first_result_seconds == pytest.approx(0.3 + 8 + 0.3)
    assert r.complete and r.peak_tasks == 1
