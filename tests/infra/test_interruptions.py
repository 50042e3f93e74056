"""Interruptions: Spot reclaims, scale-in and deployments must not dead-letter good jobs,
and a Spot task must be stopped (SIGTERM, stop deadline, SIGKILL) inside the notice."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.infra_synth import Synth, synth

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")

SPOT_NOTICE_SECONDS = 120  # EC2's Spot interruption notice


@pytest.fixture(scope="module")
def on_demand() -> Synth:
    return synth()


@pytest.fixture(scope="module")
def spot() -> Synth:
    return synth({"spot": "true"})


def _redrive(s: Synth) -> dict[str, Any]:
    main, _ = s.queue_ids()
    return s.json["Resources"][main]["Properties"]["RedrivePolicy"]


def _deployment(s: Synth) -> dict[str, Any]:
    _, service = s.one("AWS::ECS::Service")
    return service["DeploymentConfiguration"]


def test_receive_count_leaves_room_for_interruptions(on_demand: Synth, spot: Synth) -> None:
    # Each SIGTERM release counts as a receive: beyond the transient-failure retries
    # (3 before), on-demand leaves room for a few interruptions, Spot for many more.
    assert _redrive(on_demand)["maxReceiveCount"] == 5
    assert _redrive(spot)["maxReceiveCount"] == 10


def test_stop_deadline_fits_inside_stop_timeout(on_demand: Synth, spot: Synth) -> None:
    from infra.config import STOP_MARGIN_SECONDS

    for s in (on_demand, spot):
        stop_timeout = s.container()["StopTimeout"]
        deadline = int(s.env()["IMG2IMG_STOP_DEADLINE"])
        assert deadline + STOP_MARGIN_SECONDS <= stop_timeout
    assert on_demand.container()["StopTimeout"] == 120
    assert int(on_demand.env()["IMG2IMG_STOP_DEADLINE"]) == 100


def test_spot_task_is_killed_before_the_instance_is_reclaimed(spot: Synth) -> None:
    from infra.config import SPOT_DRAIN_LEAD_SECONDS

    stop_timeout = spot.container()["StopTimeout"]
    # Notice -> agent polls (1 s) -> DRAINING -> scheduler stops the task -> SIGTERM; the
    # container is gone by SIGTERM + stopTimeout, inside the 2-minute notice.
    assert stop_timeout + SPOT_DRAIN_LEAD_SECONDS <= SPOT_NOTICE_SECONDS
    assert stop_timeout == 90 and int(spot.env()["IMG2IMG_STOP_DEADLINE"]) == 70


def test_spot_draining_stops_tasks_without_waiting_for_replacements(
        on_demand: Synth, spot: Synth) -> None:
    # At 100% the scheduler stops a draining task only after its replacement runs, which
    # needs a new GPU instance: longer than the notice.
    assert _deployment(spot)["MinimumHealthyPercent"] == 0
    # On-demand too: deployments stop before they start (tests/infra/test_operations.py).
    assert _deployment(on_demand)["MinimumHealthyPercent"] == 0


def test_spot_settings_that_cannot_work_are_refused() -> None:
    from infra.config import FleetConfig

    with pytest.raises(ValueError, match="stopTimeout"):
        FleetConfig.from_context({"spot": "true", "stopTimeout": "120",
                                  "stopDeadline": "100"})
    with pytest.raises(ValueError, match="maxReceiveCount"):
        FleetConfig.from_context({"spot": "true", "maxReceiveCount": "3"})
    with pytest.raises(ValueError, match="stopDeadline"):
        FleetConfig.from_context({"stopTimeout": "120", "stopDeadline": "110"})
    # Explicit values win over the capacity type's defaults.
    chosen = FleetConfig.from_context({"spot": "true", "maxReceiveCount": "7",
                                       "stopTimeout": "80", "stopDeadline": "60"})
    assert (chosen.max_receive_count, chosen.stop_timeout, chosen.stop_deadline) == (7, 80, 60)
