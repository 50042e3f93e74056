"""The capacity planner against real workers: three worker processes (the real
``worker.fleet.service.Worker`` with a fixed-latency engine) drain a burst from moto over
HTTP, and the simulator, given the same fleet, settings and send times, must agree on
the drain time within 15 %."""

from __future__ import annotations

import pytest

from bench.planner_check import CheckSettings, run_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_the_simulated_drain_is_within_15_percent_of_real_workers(moto_endpoint) -> None:
    # 144 jobs, 3 workers, batches of 4 at 0.8 s: 12 rounds, about 10 s of draining.
    settings = CheckSettings(jobs=144, workers=3, batch=4, prefetch_batches=2, latency=0.8)
    result = run_check(settings, endpoint=moto_endpoint)
    real, simulated = result["real"], result["simulated"]
    assert real["done"] == 144  # every job has a done record (run_real checks each)
    assert sum(real["per_worker_done"]) >= 144
    # The engine alone needs 12 rounds of 0.8 s; neither side can beat that.
    assert real["drain_seconds"] >= 12 * 0.8
    assert simulated["drain_seconds"] >= 12 * 0.8
    assert result["drain_error"] <= 0.15, result
