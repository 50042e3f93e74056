"""Task scale-in protection against a local stand-in for the ECS agent's endpoint.

The stand-in answers the way the agent does (amazon-ecs-agent, task-protection v1
handlers): 200 with ``{"protection": ...}``; ECS API exceptions passed through with
their HTTP status and ``{"requestID", "error": {"Arn", "Code", "Message"}}`` (an IAM
denial is ``AccessDeniedException`` with 400); 403 ``AccessDeniedException`` when the task
has no role credentials at all; 409 ``{"failure": {"Reason": ...}}`` for per-task failures.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from common.logs import EMF_NAMESPACE
from tests.support.agent_stand_in import TASK_ARN, AgentStandIn, protected_ok
from tests.support.clock import FakeClock
from worker.fleet.task_protection import (
    ACCESS_DENIED,
    PROTECTION_FAILURE_METRIC,
    TaskProtection,
    failure_from_response,
)

DENIED_MESSAGE = ("User: arn:aws:sts::111122223333:assumed-role/WorkerTaskRole/0123 is not "
                  "authorized to perform: ecs:UpdateTaskProtection on resource: " + TASK_ARN +
                  " because no identity-based policy allows the ecs:UpdateTaskProtection action")


def denied_by_iam(_body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 400, {"requestID": "req-1", "error": {
        "Arn": TASK_ARN, "Code": ACCESS_DENIED, "Message": DENIED_MESSAGE}}


def no_task_role(_body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 403, {"error": {"Arn": TASK_ARN, "Code": ACCESS_DENIED,
                           "Message": "Invalid Request: no task IAM role credentials "
                                      "available for task"}}


def throttled(_body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 400, {"requestID": "req-2", "error": {
        "Arn": TASK_ARN, "Code": "ThrottlingException", "Message": "Rate exceeded"}}


@pytest.fixture
def agent() -> Iterator[AgentStandIn]:
    stand_in = AgentStandIn()
    yield stand_in
    stand_in.close()


@pytest.fixture
def metrics() -> list[dict[str, float]]:
    return []


def protection_for(uri: str, clock: FakeClock, metrics: list[dict[str, float]]) -> TaskProtection:
    return TaskProtection(uri, expires_minutes=30, retry_after=30.0, clock=clock,
                          metrics=lambda values, **_: metrics.append(values))


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "worker.fleet.task_protection" and r.levelno == level]


def test_busy_protects_and_idle_unprotects_without_failures(agent, metrics, caplog):
    clock = FakeClock()
    protection = protection_for(agent.uri, clock, metrics)
    protection.update(busy=True)
    protection.update(busy=True)  # already protected: no second call
    assert protection.protected
    protection.update(busy=False)
    assert not protection.protected
    assert agent.bodies == [{"ProtectionEnabled": True, "ExpiresInMinutes": 30},
                            {"ProtectionEnabled": False}]
    assert metrics == [] and protection.failed_calls == 0
    assert records(caplog, logging.ERROR) == records(caplog, logging.WARNING) == []


def test_iam_denial_is_one_error_a_metric_per_call_and_backs_off(agent, metrics, caplog):
    caplog.set_level(logging.DEBUG, logger="worker.fleet.task_protection")
    agent.answer = denied_by_iam
    clock = FakeClock()
    protection = protection_for(agent.uri, clock, metrics)

    for _ in range(20):  # the worker's protection loop calls twice a second
        protection.update(busy=True)
        clock.now += 0.5
    # 10 s of calls inside the back-off window: one request to the agent.
    assert len(agent.bodies) == 1
    assert not protection.protected
    assert protection.last_failure is not None and protection.last_failure.denied
    assert protection.last_failure.status == 400
    assert metrics == [{PROTECTION_FAILURE_METRIC: 1}]
    (error,) = records(caplog, logging.ERROR)
    assert "ecs:UpdateTaskProtection" in error.getMessage()
    assert "AccessDeniedException" in error.getMessage()

    clock.now += 30
    protection.update(busy=True)
    assert len(agent.bodies) == 2 and len(metrics) == 2
    assert len(records(caplog, logging.ERROR)) == 1, "one ERROR, not one per call"
    assert records(caplog, logging.WARNING) == []
    assert protection.failed_calls == 2


def test_task_without_role_credentials_counts_as_denied(agent, metrics, caplog):
    agent.answer = no_task_role
    protection = protection_for(agent.uri, FakeClock(), metrics)
    protection.update(busy=True)
    assert protection.last_failure is not None
    assert protection.last_failure.status == 403 and protection.last_failure.denied
    (error,) = records(caplog, logging.ERROR)
    assert "no task IAM role credentials" in error.getMessage()
    assert metrics == [{PROTECTION_FAILURE_METRIC: 1}]


def test_protection_recovers_once_the_role_is_fixed(agent, metrics, caplog):
    caplog.set_level(logging.INFO, logger="worker.fleet.task_protection")
    agent.answer = denied_by_iam
    clock = FakeClock()
    protection = protection_for(agent.uri, clock, metrics)
    protection.update(busy=True)
    assert not protection.protected
    agent.answer = protected_ok
    clock.now += 31
    protection.update(busy=True)
    assert protection.protected
    assert any("succeed again" in r.getMessage() for r in records(caplog, logging.INFO))
    # A later denial (the policy removed again) is reported as loudly as the first.
    agent.answer = denied_by_iam
    clock.now += 60 * 30  # protection due for renewal
    protection.update(busy=True)
    assert len(records(caplog, logging.ERROR)) == 2


def test_throttling_is_a_warning_not_a_denial(agent, metrics, caplog):
    agent.answer = throttled
    clock = FakeClock()
    protection = protection_for(agent.uri, clock, metrics)
    protection.update(busy=True)
    clock.now += 31
    protection.update(busy=True)
    assert records(caplog, logging.ERROR) == []
    (warning,) = records(caplog, logging.WARNING)  # one per streak of failures
    assert "ThrottlingException" in warning.getMessage()
    assert metrics == [{PROTECTION_FAILURE_METRIC: 1}] * 2


def test_unreachable_agent_is_a_failure_with_no_status(metrics, caplog):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    protection = protection_for(f"http://127.0.0.1:{port}/api/task-1", FakeClock(), metrics)
    protection.update(busy=True)
    assert protection.last_failure is not None
    assert protection.last_failure.status is None and not protection.last_failure.denied
    assert metrics == [{PROTECTION_FAILURE_METRIC: 1}]
    assert len(records(caplog, logging.WARNING)) == 1


def test_failure_metric_is_an_emf_line_in_the_fleet_namespace(agent, capsys):
    agent.answer = denied_by_iam
    TaskProtection(agent.uri).update(busy=True)  # the default metrics sink: stdout EMF
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.strip()]
    (directive,) = line["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == EMF_NAMESPACE
    assert directive["Metrics"] == [{"Name": PROTECTION_FAILURE_METRIC, "Unit": "Count"}]
    assert directive["Dimensions"] == [[]]  # no dimensions: what the stack's alarm watches
    assert line[PROTECTION_FAILURE_METRIC] == 1


def test_disabled_outside_ecs_never_calls_anything(metrics):
    protection = TaskProtection(None, metrics=lambda values, **_: metrics.append(values))
    protection.update(busy=True)
    assert not protection.enabled and not protection.protected and metrics == []


def test_agent_answers_are_parsed_for_code_and_message():
    failure = failure_from_response(409, json.dumps(
        {"failure": {"Arn": TASK_ARN, "Reason": "DEPLOYMENT_BLOCKED", "Detail": None}}).encode())
    assert (failure.status, failure.code, failure.denied) == (409, "DEPLOYMENT_BLOCKED", False)
    garbled = failure_from_response(502, b"<html>bad gateway</html>")
    assert garbled.code == "HTTPError" and "bad gateway" in garbled.message
