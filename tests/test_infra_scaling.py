"""Scaling on queue depth: target tracking on backlog per task, and the start from zero.

Checked on the on-demand and the Spot template.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.infra_synth import Synth, refs, synth

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")


@pytest.fixture(scope="module", params=["on-demand", "spot"])
def template(request: pytest.FixtureRequest) -> Synth:
    return synth({"spot": "true"} if request.param == "spot" else {})


def _policies(s: Synth, policy_type: str) -> dict[str, dict[str, Any]]:
    return {k: v["Properties"] for k, v in
            s.resources("AWS::ApplicationAutoScaling::ScalingPolicy").items()
            if v["Properties"]["PolicyType"] == policy_type}


def _metric_ids(metrics: list[dict[str, Any]]) -> dict[str, str]:
    """Metric name -> its id in a metric-math query list."""
    return {m["MetricStat"]["Metric"]["MetricName"]: m["Id"] for m in metrics
            if "MetricStat" in m}


def test_target_tracking_on_backlog_per_task(template: Synth) -> None:
    target_id, target = template.one("AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["MinCapacity"] == 0 and target["MaxCapacity"] == 4
    assert target["ScalableDimension"] == "ecs:service:DesiredCount"
    ((_, policy),) = _policies(template, "TargetTrackingScaling").items()
    assert refs(policy["ScalingTargetId"]) == {target_id}
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 32
    # Scale-in stays on: an empty queue takes the fleet back to 0 tasks.
    assert not config.get("DisableScaleIn", False)
    metrics = config["CustomizedMetricSpecification"]["Metrics"]
    ids = _metric_ids(metrics)
    (expression,) = [m["Expression"] for m in metrics if m.get("ReturnData")]
    visible, inflight = (ids["ApproximateNumberOfMessagesVisible"],
                         ids["ApproximateNumberOfMessagesNotVisible"])
    assert f"{visible} + {inflight}" in expression
    assert expression.rstrip().endswith("/ " + ids["RunningTaskCount"])


def test_start_from_zero_is_idempotent(template: Synth) -> None:
    """The alarm's action may run once a minute while the first instance boots: it sets
    the desired count to exactly 1 instead of adding 1 each time."""
    ((step_id, step),) = _policies(template, "StepScaling").items()
    config = step["StepScalingPolicyConfiguration"]
    assert config["AdjustmentType"] == "ExactCapacity"
    (adjustment,) = config["StepAdjustments"]
    assert adjustment["ScalingAdjustment"] == 1
    assert adjustment["MetricIntervalLowerBound"] == 0
    assert "MetricIntervalUpperBound" not in adjustment

    (alarm,) = [a for a in template.alarms() if step_id in refs(a.get("AlarmActions", []))]
    assert refs(alarm["AlarmActions"]) == {step_id}
    assert "OKActions" not in alarm  # nothing pins the count when jobs run out
    metrics = {m["Id"]: m for m in alarm["Metrics"]}
    ids = _metric_ids(alarm["Metrics"])
    (expression,) = [m["Expression"] for m in metrics.values() if m.get("ReturnData")]
    visible, running = ids["ApproximateNumberOfMessagesVisible"], ids["RunningTaskCount"]
    assert f"{visible} > 0" in expression and f"FILL({running}, 0) == 0" in expression
    assert alarm["Threshold"] == 1 and alarm["EvaluationPeriods"] == 1
