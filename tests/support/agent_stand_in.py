"""A local stand-in for the ECS agent's task-protection endpoint (``ECS_AGENT_URI``).

It answers the way the agent does (amazon-ecs-agent, task-protection v1 handlers): 200
with ``{"protection": ...}``; ECS API exceptions passed through with their HTTP status
and ``{"requestID", "error": {"Arn", "Code", "Message"}}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.support.local_http import LocalServer, Request

TASK_ARN = "arn:aws:ecs:us-east-1:111122223333:task/fleet/0123456789abcdef0"
TASK_PATH = "/api/task-1"  # ECS_AGENT_URI already ends in the task's own path

Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


def protected_ok(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, {"protection": {"ExpirationDate": None, "TaskArn": TASK_ARN,
                                "ProtectionEnabled": body["ProtectionEnabled"]}}


class AgentStandIn:
    """Answers PUT <task>/task-protection/v1/state with ``self.answer(body)``; records
    the bodies of the requests made to the task's own path."""

    def __init__(self, answer: Answer = protected_ok) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.other_paths: list[str] = []
        self.answer = answer
        self._server = LocalServer(self._respond)

    def _respond(self, request: Request) -> tuple[int, bytes]:
        body = json.loads(request.body)
        if request.path == f"{TASK_PATH}/task-protection/v1/state":
            self.bodies.append(body)
        else:
            self.other_paths.append(request.path)
        status, payload = self.answer(body)
        return status, json.dumps(payload).encode()

    @property
    def uri(self) -> str:
        return self._server.base_url + TASK_PATH

    def close(self) -> None:
        self._server.close()
