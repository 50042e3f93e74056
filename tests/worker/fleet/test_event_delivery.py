"""Event delivery against real HTTP servers on 127.0.0.1: a redirect from an allowed
host, a wildcard that would span '/', IPv6 forms of internal addresses, a webhook that
trickles its answer, and a stop or abort in the middle of a delivery."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest

from contract.result import ResultRecord
from tests.support.local_http import LocalServer
from tests.support.slow_http import TricklingServer
from tests.support.webhook import WebhookReceiver
from worker.fleet import events
from worker.fleet.callback_policy import parse_networks, parse_patterns
from worker.fleet.events import Delivery, Notifier, job_event

LOOPBACK = ["127.0.0.0/8"]


def _event() -> dict:
    return job_event(ResultRecord(job_id="job-123456", batch_id="b1", status="done",
                                  input="s3://a/b", output="s3://a/c", worker="w"),
                     output="s3://a/c")


def _notifier(patterns: list[str] = (), private: list[str] = (), **options) -> Notifier:
    return Notifier(topic_arn=None, sns_client=None, webhook_url=options.pop("webhook", None),
                    webhook_secret=None, callback_patterns=parse_patterns(patterns),
                    private_networks=parse_networks(private), sleep_for=0, **options)


def _deliver(notifier: Notifier, callback_url: str | None = None) -> Delivery:
    (future,) = notifier.publish(_event(), callback_url=callback_url)
    return future.result(timeout=30)


@pytest.fixture
def internal() -> Iterator[WebhookReceiver]:
    """The internal service an attacker wants to reach; it records what reaches it."""
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def test_a_redirect_from_an_allowed_host_is_never_followed(internal, caplog):
    target = internal.url.replace("/hook", "/latest/meta-data/iam/security-credentials/")
    asked: list[str] = []

    def redirect(request):
        asked.append(request.path)
        return 302, b"", {"Location": target}

    allowed = LocalServer(redirect)
    notifier = _notifier([f"{allowed.base_url}/**"], LOOPBACK)
    with caplog.at_level(logging.ERROR, logger="worker.fleet.events"):
        assert _deliver(notifier, f"{allowed.base_url}/hook") is Delivery.UNDELIVERED
    allowed.close()

    assert asked == ["/hook"], "a redirect is final: not followed, not retried"
    assert internal.received == []
    assert "302 (a redirect); redirects are not followed" in caplog.text


def test_a_wildcard_never_spans_a_slash(internal, caplog):
    port = internal.url.split(":")[2].split("/")[0]
    notifier = _notifier(["http://*.example.com/*"], LOOPBACK)
    with caplog.at_level(logging.ERROR, logger="worker.fleet.events"):
        outcome = _deliver(notifier, f"http://127.0.0.1:{port}/x.example.com/steal")
    assert outcome is Delivery.UNDELIVERED
    assert internal.received == []
    assert "refused" in caplog.text and "IMG2IMG_ALLOWED_CALLBACKS" in caplog.text


def test_internal_addresses_in_any_form_need_the_opt_in(internal, caplog):
    port = internal.url.split(":")[2].split("/")[0]
    urls = [f"http://127.0.0.1:{port}/hook", f"http://[::ffff:127.0.0.1]:{port}/hook",
            f"http://[::1]:{port}/hook", "http://[::ffff:169.254.169.254]/latest/meta-data/",
            "http://[::ffff:a9fe:a9fe]/"]
    notifier = _notifier(["*"])
    with caplog.at_level(logging.ERROR, logger="worker.fleet.events"):
        outcomes = [_deliver(notifier, url) for url in urls]
    assert outcomes == [Delivery.UNDELIVERED] * len(urls)
    assert internal.received == []
    assert caplog.text.count("refused") == len(urls)
    assert "that is 169.254.169.254" in caplog.text

    opted_in = _notifier(["*"], LOOPBACK)
    assert _deliver(opted_in, urls[0]) is Delivery.DELIVERED
    assert len(internal.received) == 1


def test_each_attempt_has_a_total_deadline_whatever_the_server_trickles(monkeypatch):
    monkeypatch.setattr(events, "WEBHOOK_TIMEOUT_S", 0.5)
    slow = TricklingServer(seconds_per_byte=0.1)
    notifier = _notifier(webhook=slow.url)
    started = time.monotonic()
    assert _deliver(notifier) is Delivery.UNDELIVERED
    elapsed = time.monotonic() - started
    slow.close()
    assert slow.requests == events.WEBHOOK_ATTEMPTS
    assert elapsed < events.WEBHOOK_ATTEMPTS * 0.5 + 2  # not the trickle's pace


def test_a_stop_cuts_deliveries_at_its_deadline_and_an_abort_at_once():
    slow = TricklingServer(seconds_per_byte=0.1)
    stopped = _notifier(webhook=slow.url)
    (future,) = stopped.publish(_event())
    started = time.monotonic()
    stopped.stop(time.monotonic() + 1.0)
    assert future.result(timeout=10) is Delivery.CUT
    assert 0.5 < time.monotonic() - started < 2.5
    assert not stopped.wait_delivered([future], timeout=1)

    aborted = _notifier(webhook=slow.url)
    (future,) = aborted.publish(_event())
    time.sleep(0.3)  # connected, reading the trickle
    started = time.monotonic()
    aborted.abort()
    assert future.result(timeout=5) is Delivery.CUT
    assert time.monotonic() - started < 1.0
    slow.close()
