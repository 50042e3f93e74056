"""ECS task scale-in protection while the worker holds jobs.

On ECS the agent exposes ``$ECS_AGENT_URI/task-protection/v1/state``; a protected task
is not chosen when the service scales in, so a busy worker is never killed mid-batch.

The agent calls ECS UpdateTaskProtection with the *task role's* credentials. Without
``ecs:UpdateTaskProtection`` on that role every call fails: the agent passes ECS's
``AccessDeniedException`` through (HTTP 400), or answers 403 when the task has no role.
Protection then silently does nothing, so a failure is made loud: one ERROR on the first
denial (a warning for other failures), and a ``TaskProtectionFailures`` CloudWatch metric
(EMF) on every failed call, which the stack alarms on. After a failure the next call
waits ``retry_after`` seconds, so a denied task does not call the agent twice a second.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.logs import emit_metrics

log = logging.getLogger(__name__)

# CloudWatch metric (namespace common.logs.EMF_NAMESPACE, no dimensions) counting failed
# calls to the agent; infra/ alarms on it.
PROTECTION_FAILURE_METRIC = "TaskProtectionFailures"
# The error code ECS (and the agent) use when the task role may not change protection.
ACCESS_DENIED = "AccessDeniedException"
# Renew this long before the protection would lapse.
_RENEW_MARGIN_SECONDS = 120
# After a failed call, wait this long before calling the agent again.
_RETRY_AFTER_FAILURE_SECONDS = 30.0


@dataclass(frozen=True)
class AgentFailure:
    """Why a call to the agent's task-protection endpoint did not succeed."""

    status: int | None  # HTTP status; None when the agent did not answer
    code: str  # e.g. AccessDeniedException, ThrottlingException, TASK_NOT_VALID, URLError
    message: str

    @property
    def denied(self) -> bool:
        """The task role may not change protection: a deployment error, not a blip."""
        return self.code == ACCESS_DENIED or self.status == 403

    def __str__(self) -> str:
        status = f"HTTP {self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}"


def failure_from_response(status: int, body: bytes) -> AgentFailure:
    """Read the agent's JSON answer: ``{"error": {"Code", "Message"}}`` for exceptions
    from the ECS API, ``{"failure": {"Reason", "Detail"}}`` for per-task failures."""
    try:
        payload: Any = json.loads(body or b"{}")
    except ValueError:
        payload = {}
    if not isinstance(payload, dict):
        payload = {}
    error = payload.get("error") or {}
    failure = payload.get("failure") or {}
    code = (error.get("Code") if isinstance(error, dict) else None) or (
        failure.get("Reason") if isinstance(failure, dict) else None) or "HTTPError"
    message = (error.get("Message") if isinstance(error, dict) else None) or (
        failure.get("Detail") if isinstance(failure, dict) else None) or (
        body.decode("utf-8", "replace")[:300] if body else "")
    return AgentFailure(status=status, code=str(code), message=str(message))


class TaskProtection:
    def __init__(self, agent_uri: str | None, expires_minutes: int = 60,
                 timeout: float = 3.0, *,
                 retry_after: float = _RETRY_AFTER_FAILURE_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 metrics: Callable[..., None] = emit_metrics) -> None:
        self.agent_uri = agent_uri.rstrip("/") if agent_uri else None
        self.expires_minutes = expires_minutes
        self.timeout = timeout
        self.retry_after = retry_after
        self.protected = False
        self.failed_calls = 0
        self.last_failure: AgentFailure | None = None
        self._clock = clock
        self._metrics = metrics
        self._expires_at = 0.0
        self._retry_at = 0.0
        self._failing = False
        self._denial_reported = False
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> TaskProtection:
        return cls(os.environ.get("ECS_AGENT_URI"))

    @property
    def enabled(self) -> bool:
        return self.agent_uri is not None

    def update(self, busy: bool) -> None:
        """Protect when busy, unprotect when idle; calls the agent only on change/renewal.

        Called from the receiver and the worker's protection thread: one call at a time.
        """
        if not self.enabled:
            return
        with self._lock:
            self._update(busy)

    def _update(self, busy: bool) -> None:
        now = self._clock()
        if now < self._retry_at:
            return
        if busy and (not self.protected or now > self._expires_at - _RENEW_MARGIN_SECONDS):
            if self._put(True):
                self.protected = True
                self._expires_at = now + self.expires_minutes * 60
        elif not busy and self.protected and self._put(False):
            self.protected = False

    def _put(self, enabled: bool) -> bool:
        body: dict[str, object] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = self.expires_minutes
        request = urllib.request.Request(
            f"{self.agent_uri}/task-protection/v1/state", data=json.dumps(body).encode(),
            method="PUT", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            try:
                answer = exc.read()
            finally:
                exc.close()
            self._failed(failure_from_response(exc.code, answer))
            return False
        except OSError as exc:  # connection refused, timeout, DNS: the agent did not answer
            reason = getattr(exc, "reason", exc)
            self._failed(AgentFailure(None, type(reason).__name__, str(reason)))
            return False
        if self._failing:
            log.info("task protection calls succeed again after %d failed calls",
                     self.failed_calls)
            self._failing = False
            self._denial_reported = False
        log.info("task protection %s", "enabled" if enabled else "disabled")
        return True

    def _failed(self, failure: AgentFailure) -> None:
        self.failed_calls += 1
        self.last_failure = failure
        self._retry_at = self._clock() + self.retry_after
        self._metrics({PROTECTION_FAILURE_METRIC: 1}, units={PROTECTION_FAILURE_METRIC: "Count"})
        first_in_streak = not self._failing
        self._failing = True
        if failure.denied and not self._denial_reported:
            self._denial_reported = True
            log.error(
                "task scale-in protection is denied (%s). The task role needs "
                "ecs:UpdateTaskProtection and ecs:GetTaskProtection on this cluster's tasks; "
                "until it has them, a scale-in can stop this task while it holds jobs "
                "(they are released and redone, not lost). Retrying every %.0f s.",
                failure, self.retry_after, extra={"protection_error": failure.code})
        elif first_in_streak and not failure.denied:
            log.warning("task protection update failed (%s); retrying in %.0f s",
                        failure, self.retry_after,
                        extra={"protection_error": failure.code})
        else:
            log.debug("task protection update failed again (%s)", failure)
