"""``img2img-producer plan``: numbers a reader can check by hand, from the real command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from capacity_planner.prices import ON_DEMAND_USD_PER_HOUR, PRICES_DATE, PRICES_REGION
from tests.support.paths import REPO


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "producer.cli", "plan", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def plan_json(*args: str) -> dict:
    done = plan(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_steady_drain_is_images_times_seconds_over_tasks_plus_the_cold_start() -> None:
    images, seconds, tasks = 100_000, 1.5, 4
    p = plan_json("--images", str(images), "--seconds-per-image", str(seconds),
                  "--max-tasks", str(tasks), "--batch-size", "8",
                  "--instance-type", "g5.xlarge")
    assert p["inputs"]["max_tasks"] == tasks and p["inputs"]["batch_size"] == 8
    # GPU time at the full fleet: N * s / T.
    gpu = images * seconds / tasks
    assert p["steady_state"]["gpu_seconds_at_full_fleet"] == pytest.approx(gpu)
    # Cold start: the producer's start call answers start_call after the jobs are sent;
    # it raises the GPU group too, so no capacity-provider reaction: boot, image pull
    # and model load follow, each as listed.
    s = p["start_up_seconds"]
    cold = p["cold_start_seconds"]
    assert p["inputs"]["producer_start"] is True
    assert cold["start_decision"] == s["start_call"]
    assert cold["task_running"] == pytest.approx(
        cold["start_decision"] + s["boot"] + s["image_pull"] + s["model_load"])
    # Drain = N * s / T + cold start, plus the minutes one task works alone before the
    # others join (under 2 % of this drain).
    drain = p["drain_seconds"]
    assert drain == pytest.approx(gpu + cold["task_running"], rel=0.02)
    assert drain > gpu + cold["task_running"]
    assert p["dominated_by"] == "gpu time"
    # Every image costs exactly s of engine time; cost = GPU-hours billed x price.
    hours = p["gpu_hours"]
    assert hours["busy"] == pytest.approx(images * seconds / 3600, rel=1e-9)
    assert hours["billed"] == pytest.approx(
        hours["busy"] + hours["startup"] + hours["waiting"] + hours["tail_after_last_result"]
        + hours["warm_pool_refill"])
    cost = p["cost"]["on_demand"]
    assert cost["usd_per_hour"] == ON_DEMAND_USD_PER_HOUR["g5.xlarge"] == 1.006
    assert cost["gpu_usd"] == pytest.approx(hours["billed"] * 1.006, rel=1e-9)
    assert cost["busy_gpu_floor_usd"] == pytest.approx(hours["busy"] * 1.006, rel=1e-9)
    # The requests: the dated table's counts per job at its prices, for every image.
    r = p["requests"]
    per_job = r["requests_per_job"]
    assert r["total_usd"] == pytest.approx(images * (
        per_job["s3_put"] * 0.005 / 1000 + per_job["s3_get"] * 0.0004 / 1000
        + per_job["sqs"] * 0.40 / 1e6 + per_job["sns"] * 0.50 / 1e6), rel=1e-9)
    assert cost["total_usd"] == pytest.approx(cost["gpu_usd"] + r["total_usd"], rel=1e-9)
    assert cost["per_1000_images_usd"] == pytest.approx(1000 * cost["total_usd"] / images)
    assert PRICES_DATE in cost["source"] and PRICES_REGION in cost["source"]
    assert p["cost"]["spot"] is None  # no Spot price is known, none is made up


def test_the_warm_pool_and_the_start_call_are_plan_options() -> None:
    cold = plan_json("--images", "1000", "--no-start")
    warm = plan_json("--images", "1000", "--warm-pool-size", "4")
    assert cold["inputs"]["producer_start"] is False and cold["inputs"]["warm_pool_size"] == 0
    assert warm["inputs"]["producer_start"] is True and warm["inputs"]["warm_pool_size"] == 4
    s = cold["start_up_seconds"]
    # Without the start call the alarm reads the first minute a metric delay late, and
    # the capacity provider reacts; a warm-pool instance only resumes, with its image.
    assert cold["cold_start_seconds"]["start_decision"] == 60 + s["metric_delay"]
    assert cold["cold_start_seconds"]["task_running"] == pytest.approx(
        120 + s["capacity"] + s["boot"] + s["image_pull"] + s["model_load"])
    assert warm["cold_start_seconds"]["task_running"] == pytest.approx(
        s["start_call"] + s["warm_resume"] + s["model_load"])
    assert warm["gpu_hours"]["warm_pool_refill"] > 0


def test_a_small_batch_is_dominated_by_the_cold_start_and_the_idle_tail() -> None:
    p = plan_json("--images", "500", "--seconds-per-image", "1")
    assert p["dominated_by"] == "cold start"
    hours = p["gpu_hours"]
    # 500 jobs start ceil(500 / 32) = 16 tasks, capped at 4; each instance boots, pulls
    # and loads (4 minutes) for about two minutes of work.
    assert hours["startup"] > hours["busy"]


def test_spot_with_a_given_price() -> None:
    p = plan_json("--images", "20000", "--spot", "--price-per-hour", "0.4",
                  "--interruptions-per-hour", "0.5", "--max-tasks", "8")
    assert p["inputs"]["spot"] is True and p["inputs"]["interruptions_per_hour"] == 0.5
    spot = p["cost"]["spot"]
    assert spot["usd_per_hour"] == 0.4 and "--price-per-hour" in spot["source"]
    assert spot["gpu_usd"] == pytest.approx(p["gpu_hours"]["billed"] * 0.4, rel=1e-9)
    assert p["fleet"]["complete"] and p["fleet"]["peak_tasks"] == 8


def test_a_rate_is_planned_for_latency() -> None:
    p = plan_json("--images", "7200", "--rate", "2", "--seconds-per-image", "1")
    # 2 images/s need 2 tasks at 1 s each; the fleet keeps up once started, so the
    # arrivals' own span (an hour) dominates and half the jobs wait under a minute.
    assert p["dominated_by"] == "arrivals"
    assert p["latency_seconds"]["p50"] < 60
    assert any("scale-in" in d for d in p["decisions"])


def test_the_text_names_what_dominates_and_the_assumptions() -> None:
    done = plan("--images", "1000", "--instance-type", "g6e.2xlarge", "--spot")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "dominated by" in out and "cold start" in out
    assert "no price for g6e.2xlarge: pass --price-per-hour with --spot" in out
    assert "assumption:" in out and "not measured" in out


def test_a_setting_the_stack_refuses_is_one_line() -> None:
    done = plan("--images", "10", "--instance-type", "p4d.24xlarge")
    assert done.returncode == 2
    assert "instanceTypes" in done.stderr and "Traceback" not in done.stderr
