"""ECS task scale-in protection while the worker holds jobs.

On ECS the agent exposes ``$ECS_AGENT_URI/task-protection/v1/state``; a protected task
is not chosen when the service scales in, so a busy worker is never killed mid-batch.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request

log = logging.getLogger(__name__)

# Renew this long before the protection would lapse.
_RENEW_MARGIN_SECONDS = 120


class TaskProtection:
    def __init__(self, agent_uri: str | None, expires_minutes: int = 60,
                 timeout: float = 3.0) -> None:
        self.agent_uri = agent_uri.rstrip("/") if agent_uri else None
        self.expires_minutes = expires_minutes
        self.timeout = timeout
        self.protected = False
        self._expires_at = 0.0
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
        now = time.monotonic()
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
            log.info("task protection %s", "enabled" if enabled else "disabled")
            return True
        except OSError as exc:
            log.warning("task protection update failed: %s", exc)
            return False
