"""Telling people when work ends: one JSON event per job end and one ``batch.complete``
per batch, published to an SNS topic, POSTed to a fleet webhook (signed) and to a job's
own callback URL (when the fleet allows it: ``worker.fleet.callback_policy``).

Delivery happens off the job's path, in the notifier's own daemon threads: an SNS or
webhook outage never fails a job, holds the GPU, makes a job run again or keeps the
process alive. Each POST attempt has a total deadline; after a stop every delivery ends
by the stop deadline, and ``abort`` ends them at once. What cannot be delivered is
logged and counted (``EventsUndelivered``); a refused URL is logged with its reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from common.logs import emit_metrics
from contract.batches import BatchCounts
from contract.errors import CallbackNotAllowed
from contract.result import ResultRecord
from worker.fleet.callback_policy import IPNetwork, UrlPattern, check_url
from worker.fleet.http_post import PostFailed, Posts

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Img2img-Signature"
EVENT_HEADER = "X-Img2img-Event"
WEBHOOK_TIMEOUT_S = 5.0  # one attempt, all of it: connect, send, the answer's status
WEBHOOK_ATTEMPTS = 4  # the first try included; backoff 0.5, 1, 2 s between
WEBHOOK_BACKOFF_S = 0.5
MAX_QUEUED_EVENTS = 10_000  # past this, events are dropped (and counted), never waited on
SENDER_THREADS = 4
# How long the end of a batch waits for its event: the webhook's worst case (four tries of
# 5 s and 3.5 s of backoff) plus room for events queued ahead of it.
DELIVERY_WAIT_S = 60.0
_POLL_S = 0.2  # how often a wait looks at whether the notifier was aborted


class Delivery(str, Enum):
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"  # refused, or failed after the retries: counted, logged
    CUT = "cut"  # the worker stopped before it was delivered


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


class Notifier:
    """Publishes events in the background; ``publish`` never blocks."""

    def __init__(self, *, topic_arn: str | None, sns_client: Callable[[], Any] | None,
                 webhook_url: str | None, webhook_secret: str | None,
                 callback_patterns: Sequence[UrlPattern] = (),
                 private_networks: Sequence[IPNetwork] = (),
                 sleep_for: float = WEBHOOK_BACKOFF_S) -> None:
        self.topic_arn = topic_arn
        self._sns_client = sns_client
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.callback_patterns = list(callback_patterns)
        self.private_networks = list(private_networks)
        self._backoff = sleep_for
        self._posts = Posts()
        self._queue: queue.SimpleQueue[tuple[Future[Delivery], Callable[[], Delivery]]] = \
            queue.SimpleQueue()
        self._cond = threading.Condition()
        self._pending = 0
        self._stop_at: float | None = None
        self._aborted = threading.Event()
        self.delivered = 0
        self.undelivered = 0
        self.cut = 0
        for index in range(SENDER_THREADS):
            threading.Thread(target=self._sender, name=f"events-{index}", daemon=True).start()

    @property
    def enabled(self) -> bool:
        return bool(self.topic_arn or self.webhook_url or self.callback_patterns)

    def publish(self, event: dict[str, Any], callback_url: str | None = None
                ) -> list[Future[Delivery]]:
        """Queue the event for each target; each future ends with how its delivery
        ended (it never raises)."""
        body = json.dumps(event, separators=(",", ":"), default=str).encode()
        targets: list[tuple[str, Callable[[], None]]] = []
        if self.topic_arn:
            targets.append(("sns", lambda: self._to_sns(event, body)))
        if self.webhook_url:
            url = self.webhook_url
            targets.append(("webhook", lambda: self._post(url, event, body, callback=False)))
        if callback_url:
            targets.append(("callback", lambda: self._post(callback_url, event, body,
                                                            callback=True)))
        futures: list[Future[Delivery]] = []
        for name, send in targets:
            with self._cond:
                full = self._pending >= MAX_QUEUED_EVENTS
                self._pending += 0 if full else 1
            if full:
                self._count(Delivery.UNDELIVERED, name, event, "the event queue is full")
                continue
            future: Future[Delivery] = Future()
            self._queue.put((future, lambda n=name, s=send: self._deliver(n, s, event)))
            futures.append(future)
        return futures

    def wait_delivered(self, futures: list[Future[Delivery]],
                       timeout: float = DELIVERY_WAIT_S) -> bool:
        """Whether every delivery ended within ``timeout`` and none was cut by a stop
        (refused or undelivered ones count as ended: retrying would not help)."""
        deadline = time.monotonic() + timeout
        while not self._aborted.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if not wait_futures(futures, timeout=min(_POLL_S, left)).not_done:
                return all(f.result() is not Delivery.CUT for f in futures)
        return False

    def stop(self, deadline: float) -> None:
        """From now on, deliveries end by ``deadline`` (monotonic): what is not delivered
        by then is cut."""
        with self._cond:
            self._stop_at = deadline if self._stop_at is None else min(self._stop_at,
                                                                         deadline)

    def abort(self) -> None:
        """End every delivery now: open connections are cut, nothing more is sent."""
        self._aborted.set()
        self._posts.abort()
        with self._cond:
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued within ``timeout`` seconds (and the stop deadline),
        then cut what is left."""
        self.stop(time.monotonic() + timeout)
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0 or self._aborted.is_set(),
                                timeout=max(0.0, self._stop_deadline() - time.monotonic()))
            left = self._pending
        if left:
            log.warning("%d event deliveries still running at exit are cut", left)
        self.abort()

    # -- the senders ----------------------------------------------------------------------

    def _sender(self) -> None:
        while True:
            future, deliver = self._queue.get()
            try:
                future.set_result(deliver())
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def _stop_deadline(self) -> float:
        with self._cond:
            return self._stop_at if self._stop_at is not None else float("inf")

    def _stopped(self) -> bool:
        return self._aborted.is_set() or time.monotonic() >= self._stop_deadline()

    def _deliver(self, name: str, send: Callable[[], None], event: dict[str, Any]
                 ) -> Delivery:
        if self._stopped():
            return self._count(Delivery.CUT, name, event, "the worker stopped first")
        try:
            send()
        except CallbackNotAllowed as exc:
            return self._count(Delivery.UNDELIVERED, name, event, f"refused: {exc}")
        except PostFailed as exc:
            cut = self._stopped()
            return self._count(Delivery.CUT if cut else Delivery.UNDELIVERED, name, event,
                               str(exc))
        except Exception as exc:  # noqa: BLE001 - counted and logged; the job is not touched
            return self._count(Delivery.UNDELIVERED, name, event, repr(exc))
        return self._count(Delivery.DELIVERED, name, event, "")

    def _count(self, how: Delivery, target: str, event: dict[str, Any], why: str
               ) -> Delivery:
        with self._cond:
            if how is Delivery.DELIVERED:
                self.delivered += 1
            elif how is Delivery.CUT:
                self.cut += 1
            else:
                self.undelivered += 1
        if how is Delivery.DELIVERED:
            return how
        subject = event.get("job_id") or event.get("batch_id")
        log.log(logging.WARNING if how is Delivery.CUT else logging.ERROR,
                "could not deliver %s event %s for %s%s: %s", target, event.get("type"),
                subject, " (cut by the stop)" if how is Delivery.CUT else "", why,
                extra={"job_id": event.get("job_id"), "batch_id": event.get("batch_id")})
        emit_metrics({"EventsUndelivered": 1.0}, {"Target": target},
                     {"EventsUndelivered": "Count"})
        return how

    def _to_sns(self, event: dict[str, Any], body: bytes) -> None:
        assert self._sns_client is not None
        attributes = {name: {"DataType": "String", "StringValue": str(event[name])}
                      for name in ("type", "batch_id", "status") if event.get(name)}
        self._sns_client().publish(TopicArn=self.topic_arn, Message=body.decode(),
                                   MessageAttributes=attributes)

    def _post(self, url: str, event: dict[str, Any], body: bytes, *, callback: bool) -> None:
        """POST with retries and backoff, each attempt within WEBHOOK_TIMEOUT_S and all
        of them within the stop deadline. The URL is checked (and resolved) before each
        attempt; a refusal or an answer that retrying cannot change ends it."""
        headers = {"Content-Type": "application/json", EVENT_HEADER: str(event["type"])}
        if self.webhook_secret:
            headers[SIGNATURE_HEADER] = sign(self.webhook_secret, body)
        for attempt in range(WEBHOOK_ATTEMPTS):
            target = check_url(url, patterns=self.callback_patterns if callback else None,
                               private_networks=self.private_networks if callback else None)
            deadline = min(time.monotonic() + WEBHOOK_TIMEOUT_S, self._stop_deadline())
            try:
                self._posts.post(target, body, headers, deadline=deadline)
                return
            except PostFailed as exc:
                if not exc.retryable or attempt + 1 == WEBHOOK_ATTEMPTS or self._stopped():
                    raise
            pause = self._backoff * 2 ** attempt
            if self._aborted.wait(min(pause, max(0.0, self._stop_deadline()
                                                  - time.monotonic()))):
                raise PostFailed("the worker is stopping", retryable=False)
