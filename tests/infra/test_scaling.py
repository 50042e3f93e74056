"""Scaling on queue depth: target tracking on backlog per task, and the start from zero.

Checked on the on-demand and the Spot template.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.infra_synth import EVERYTHING_ON, SPOT, Synth, refs, synth

pytest.importorskip("aws_cdk", reason="the infra extra (aws-cdk-lib) is not installed")


@pytest.fixture(scope="module", params=["on-demand", "spot", "everything-on"])
def template(request: pytest.FixtureRequest) -> Synth:
    return synth({"on-demand": {}, "spot": SPOT, "everything-on": EVERYTHING_ON}[
        request.param])


def _consumed_queues(s: Synth) -> list[str]:
    """Logical ids of the queues the worker receives from (main, then priority)."""
    env = s.env()
    names = ["IMG2IMG_QUEUE_URL", "IMG2IMG_PRIORITY_QUEUE_URL"]
    return [next(iter(refs(env[n]))) for n in names if n in env]


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
    (expression,) = [m["Expression"] for m in metrics if m.get("ReturnData")]
    by_id = {m["Id"]: m["MetricStat"] for m in metrics if "MetricStat" in m}
    # Every consumed queue's waiting and in-flight messages, FILLed (an idle queue
    # publishes nothing), over the running tasks.
    counted = {(next(iter(refs(stat["Metric"]["Dimensions"]))), stat["Metric"]["MetricName"])
               for stat in by_id.values() if stat["Metric"]["Namespace"] == "AWS/SQS"}
    assert counted == {(q, name) for q in _consumed_queues(template)
                       for name in ("ApproximateNumberOfMessagesVisible",
                                    "ApproximateNumberOfMessagesNotVisible")}
    sqs_ids = [i for i, stat in by_id.items() if stat["Metric"]["Namespace"] == "AWS/SQS"]
    numerator = " + ".join(f"FILL({i}, 0)" for i in sqs_ids)
    running = _metric_ids(metrics)["RunningTaskCount"]
    assert expression == f"({numerator}) / {running}"


def test_start_from_zero_sets_the_backlogs_need_exactly(template: Synth) -> None:
    """The alarm's action may run once a minute while the first instance boots: its
    value is the number of jobs waiting, and each ExactCapacity tier sets exactly
    ceil(waiting / backlogPerTask) tasks (1 to maxTasks), never "+1"."""
    from aws_cdk.assertions import Match

    template.template.has_resource_properties("AWS::ApplicationAutoScaling::ScalingPolicy", {
        "PolicyType": "StepScaling",
        "StepScalingPolicyConfiguration": Match.object_like({
            "AdjustmentType": "ExactCapacity",
            "StepAdjustments": Match.array_with([
                {"MetricIntervalLowerBound": 0, "MetricIntervalUpperBound": 32,
                 "ScalingAdjustment": 1}])})})
    (alarm,) = [a for a in template.alarms() if "Waiting jobs with no worker" in str(a)]
    (step_id,) = refs(alarm["AlarmActions"])
    step = template.json["Resources"][step_id]["Properties"]
    config = step["StepScalingPolicyConfiguration"]
    assert config["AdjustmentType"] == "ExactCapacity"
    # Bounds are offsets from the threshold (1): waiting 1..32 -> 1 task, 33..64 -> 2,
    # 65..96 -> 3, 97 and more -> 4 (maxTasks).
    tiers = [(a["MetricIntervalLowerBound"], a.get("MetricIntervalUpperBound"),
              a["ScalingAdjustment"]) for a in config["StepAdjustments"]]
    assert tiers == [(0, 32, 1), (32, 64, 2), (64, 96, 3), (96, None, 4)]
    assert "OKActions" not in alarm  # nothing pins the count when jobs run out
    metrics = {m["Id"]: m for m in alarm["Metrics"]}
    (expression,) = [m["Expression"] for m in metrics.values() if m.get("ReturnData")]
    waiting = {i: m["MetricStat"]["Metric"] for i, m in metrics.items()
               if m.get("MetricStat", {}).get("Metric", {}).get("Namespace") == "AWS/SQS"}
    assert {next(iter(refs(m["Dimensions"]))) for m in waiting.values()} == set(
        _consumed_queues(template))
    assert {m["MetricName"] for m in waiting.values()} == {"ApproximateNumberOfMessagesVisible"}
    any_waiting = " + ".join(f"FILL({i}, 0)" for i in waiting)
    running = _metric_ids(alarm["Metrics"])["RunningTaskCount"]
    desired = _metric_ids(alarm["Metrics"])["DesiredTaskCount"]
    assert expression == (f"IF(({any_waiting}) > 0 AND FILL({running}, 0) == 0 AND "
                          f"FILL({desired}, 0) == 0, {any_waiting}, 0)")
    assert alarm["Threshold"] == 1 and alarm["EvaluationPeriods"] == 1


def test_start_tiers_follow_the_context() -> None:
    s = synth({"maxTasks": "6", "backlogPerTask": "10"})
    (alarm,) = [a for a in s.alarms() if "Waiting jobs with no worker" in str(a)]
    (step_id,) = refs(alarm["AlarmActions"])
    adjustments = s.json["Resources"][step_id]["Properties"][
        "StepScalingPolicyConfiguration"]["StepAdjustments"]
    assert [(a["MetricIntervalLowerBound"], a.get("MetricIntervalUpperBound"),
             a["ScalingAdjustment"]) for a in adjustments] == [
        (0, 10, 1), (10, 20, 2), (20, 30, 3), (30, 40, 4), (40, 50, 5), (50, None, 6)]
