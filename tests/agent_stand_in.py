"""A local stand-in for the ECS agent's task-protection endpoint (``ECS_AGENT_URI``).

It answers the way the agent does (amazon-ecs-agent, task-protection v1 handlers): 200
with ``{"protection": ...}``; ECS API exceptions passed through with their HTTP status
and ``{"requestID", "error": {"Arn", "Code", "Message"}}``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == f"{TASK_PATH}/task-protection/v1/state":
                    agent.bodies.append(body)
                else:
                    agent.other_paths.append(self.path)
                status, payload = agent.answer(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def uri(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{TASK_PATH}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
