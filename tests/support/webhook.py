"""A webhook receiver on 127.0.0.1 that records what reaches it."""

from __future__ import annotations

from typing import Any

from tests.support.local_http import LocalServer, Request


class WebhookReceiver:
    """A local webhook receiver that fails the first ``fail`` requests with 500."""

    def __init__(self, fail: int = 0) -> None:
        self.received: list[tuple[Any, bytes]] = []  # (headers, case-insensitive; body)
        self.fail = fail
        self._server = LocalServer(self._respond)

    def _respond(self, request: Request) -> tuple[int, bytes]:
        if self.fail > 0:
            self.fail -= 1
            return 500, b""
        self.received.append((request.headers, request.body))
        return 204, b""

    @property
    def url(self) -> str:
        return self._server.base_url + "/hook"

    def close(self) -> None:
        self._server.close()
