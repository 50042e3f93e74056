"""Telling people when work ends: one JSON event per job end and one ``batch.complete``
per batch, published to an SNS topic, POSTed to a fleet webhook (signed) and to a job's
own callback URL (when the fleet allows it).

Delivery happens off the job's path, in the notifier's own threads: an SNS or webhook
outage never fails a job, holds the GPU, or makes a job run again. What cannot be
delivered after the retries is logged and counted (``EventsUndelivered``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import datetime, timezone
from typing import Any

from common.logs import emit_metrics
from contract.batches import BatchCounts
from contract.errors import CallbackNotAllowed
from contract.result import ResultRecord

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Img2img-Signature"
EVENT_HEADER = "X-Img2img-Event"
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS = 4  # the first try included; backoff 0.5, 1, 2 s between
WEBHOOK_BACKOFF_S = 0.5
MAX_QUEUED_EVENTS = 10_000  # past this, events are dropped (and counted), never waited on
SENDER_THREADS = 4
# How long the end of a batch waits for its event: the webhook's worst case (four tries of
# 5 s and 3.5 s of backoff) plus room for events queued ahead of it.
DELIVERY_WAIT_S = 60.0
# Cloud metadata endpoints: never a callback, whatever the allow-list says.
_METADATA_HOSTS = {"metadata.google.internal", "metadata", "metadata.azure.com"}
_METADATA_ADDRESSES = {ipaddress.ip_address("169.254.169.254"),
                       ipaddress.ip_address("fd00:ec2::254")}


def job_event(record: ResultRecord, *, output: str | None) -> dict[str, Any]:
    """``job.done`` / ``job.failed`` / ``job.cancelled`` / ``job.expired``."""
    return {
        "type": f"job.{record.status}", "job_id": record.job_id, "batch_id": record.batch_id,
        "status": record.status, "input": record.input, "output": output,
        "error": record.error.model_dump() if record.error else None, "model": record.model,
        "seconds": record.seconds, "gpu_seconds": record.gpu_seconds,
        "cost_usd": record.cost_usd, "worker": record.worker, "time": _now(),
    }


def batch_event(batch_id: str, output_prefix: str, total: int, counts: BatchCounts,
                worker: str) -> dict[str, Any]:
    return {"type": "batch.complete", "batch_id": batch_id, "status": "complete",
            "output": output_prefix, "total": total, **counts.model_dump(), "worker": worker,
            "time": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def sign(secret: str, body: bytes) -> str:
    """The webhook signature header's value: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_callback(url: str, allowed: list[str],
                   resolve: Callable[[str], list[str]] | None = None) -> None:
    """CallbackNotAllowed unless ``url`` matches an IMG2IMG_ALLOWED_CALLBACKS pattern and
    resolves to no link-local or metadata address."""
    if not any(fnmatch.fnmatchcase(url, pattern) for pattern in allowed):
        raise CallbackNotAllowed(
            f"callback_url {url!r} is not allowed; IMG2IMG_ALLOWED_CALLBACKS is "
            f"{','.join(allowed) or '(empty: no per-job callbacks)'}")
    host = urllib.parse.urlsplit(url).hostname or ""
    if host.lower() in _METADATA_HOSTS:
        raise CallbackNotAllowed(f"callback_url {url!r}: a metadata host is never allowed")
    for address in (resolve or _resolve)(host):
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.is_link_local or ip in _METADATA_ADDRESSES:
            raise CallbackNotAllowed(f"callback_url {url!r} resolves to {ip}, a link-local "
                                     "or metadata address, which is never allowed")


def _resolve(host: str) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None)})
    except OSError as exc:
        raise CallbackNotAllowed(f"callback host {host!r} does not resolve: {exc}") from None


class Notifier:
    """Publishes events in the background; ``publish`` never blocks."""

    def __init__(self, *, topic_arn: str | None, sns_client: Callable[[], Any] | None,
                 webhook_url: str | None, webhook_secret: str | None,
                 allowed_callbacks: list[str],
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.topic_arn = topic_arn
        self._sns_client = sns_client
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.allowed_callbacks = allowed_callbacks
        self._sleep = sleep
        self._pool = ThreadPoolExecutor(SENDER_THREADS, thread_name_prefix="events")
        self._cond = threading.Condition()
        self._pending = 0
        self.delivered = 0
        self.undelivered = 0

    @property
    def enabled(self) -> bool:
        return bool(self.topic_arn or self.webhook_url or self.allowed_callbacks)

    def publish(self, event: dict[str, Any], callback_url: str | None = None
                ) -> list[Future[None]]:
        """Queue the event for each target; the futures end when each delivery ended,
        delivered or counted as undelivered (they never raise)."""
        futures: list[Future[None]] = []
        targets: list[tuple[str, Callable[[bytes], None]]] = []
        if self.topic_arn:
            targets.append(("sns", lambda body: self._to_sns(event, body)))
        if self.webhook_url:
            targets.append(("webhook", lambda body: self._to_url(self.webhook_url, event,
                                                                  body)))
        if callback_url:
            targets.append(("callback", lambda body: self._to_callback(callback_url, event,
                                                                        body)))
        body = json.dumps(event, separators=(",", ":"), default=str).encode()
        for name, send in targets:
            with self._cond:
                full = self._pending >= MAX_QUEUED_EVENTS
                self._pending += 0 if full else 1
            if full:
                self._count_undelivered(name, event, "the event queue is full")
                continue
            futures.append(self._pool.submit(self._deliver, name, send, body, event))
        return futures

    @staticmethod
    def all_ended(futures: list[Future[None]], timeout: float = DELIVERY_WAIT_S) -> bool:
        """Whether every delivery ended (delivered or counted undelivered) within
        ``timeout`` seconds."""
        return not futures or not wait_futures(futures, timeout=timeout).not_done

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, waiting at most ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0, timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, name: str, send: Callable[[bytes], None], body: bytes,
                 event: dict[str, Any]) -> None:
        try:
            send(body)
            with self._cond:
                self.delivered += 1
        except Exception as exc:  # noqa: BLE001 - counted and logged; the job is not touched
            self._count_undelivered(name, event, repr(exc))
        finally:
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def _count_undelivered(self, target: str, event: dict[str, Any], why: str) -> None:
        with self._cond:
            self.undelivered += 1
        log.error("could not deliver %s event %s for %s: %s", target, event.get("type"),
                  event.get("job_id") or event.get("batch_id"), why,
                  extra={"job_id": event.get("job_id"), "batch_id": event.get("batch_id")})
        emit_metrics({"EventsUndelivered": 1.0}, {"Target": target},
                     {"EventsUndelivered": "Count"})

    def _to_sns(self, event: dict[str, Any], body: bytes) -> None:
        assert self._sns_client is not None
        attributes = {name: {"DataType": "String", "StringValue": str(event[name])}
                      for name in ("type", "batch_id", "status") if event.get(name)}
        self._sns_client().publish(TopicArn=self.topic_arn, Message=body.decode(),
                                   MessageAttributes=attributes)

    def _to_callback(self, url: str, event: dict[str, Any], body: bytes) -> None:
        check_callback(url, self.allowed_callbacks)  # again: DNS may have changed
        self._to_url(url, event, body)

    def _to_url(self, url: str, event: dict[str, Any], body: bytes) -> None:
        """POST with retries and backoff; 4xx other than 408/429 are not retried."""
        headers = {"Content-Type": "application/json", EVENT_HEADER: str(event["type"])}
        if self.webhook_secret:
            headers[SIGNATURE_HEADER] = sign(self.webhook_secret, body)
        for attempt in range(WEBHOOK_ATTEMPTS):
            request = urllib.request.Request(url, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
                    response.read()
                return
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    raise
                if attempt + 1 == WEBHOOK_ATTEMPTS:
                    raise
            except OSError:
                if attempt + 1 == WEBHOOK_ATTEMPTS:
                    raise
            self._sleep(WEBHOOK_BACKOFF_S * 2 ** attempt)
