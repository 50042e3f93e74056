"""The queue consumer against real SQS queues (moto over HTTP): poll order across
queues, and every received message settled exactly once."""

from __future__ import annotations

import json
import time
import uuid

from tests.support.fleet import queue_counts
from worker.fleet.consumer import DeliveryState, QueueConsumer
from worker.fleet.sqs_queue import SqsQueue


def _queue(sqs, name: str) -> SqsQueue:
    return SqsQueue(sqs, sqs.create_queue(QueueName=f"{name}-{uuid.uuid4().hex[:8]}")[
        "QueueUrl"])


def _fill(sqs, queue: SqsQueue, prefix: str, count: int) -> None:
    for start in range(0, count, 10):
        sqs.send_message_batch(QueueUrl=queue.queue_url, Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"n": f"{prefix}{start + i}"})}
            for i in range(min(10, count - start))])


def _consumer(queues: list[SqsQueue], **options) -> QueueConsumer:
    return QueueConsumer(queues, visibility_timeout=30, wait_seconds=0,
                         heartbeat_interval=10, **options)


def test_the_first_queue_is_asked_first_and_the_others_keep_a_fair_share(fleet, sqs):
    high, normal = _queue(sqs, "high"), _queue(sqs, "normal")
    _fill(sqs, high, "h", 40)
    _fill(sqs, normal, "n", 10)
    consumer = _consumer([high, normal], fair_share=4)
    order = [consumer.receive(1)[0].queue for _ in range(8)]
    # High first, except every fourth round, where the normal queue goes first.
    assert [q is high for q in order] == [True, True, True, False, True, True, True, False]
    consumer.release_all()


def test_an_empty_first_queue_falls_through_to_the_next(fleet, sqs):
    high, normal = _queue(sqs, "high"), _queue(sqs, "normal")
    _fill(sqs, normal, "n", 3)
    consumer = _consumer([high, normal])
    got = consumer.receive(10)
    assert len(got) == 3 and all(d.queue is normal for d in got)
    consumer.release_all()


def test_every_message_is_settled_once(fleet, sqs):
    queue = _queue(sqs, "settle")
    _fill(sqs, queue, "m", 6)
    consumer = _consumer([queue])
    consumer.start()
    deliveries = consumer.receive(10)
    while len(deliveries) < 6:
        deliveries += consumer.receive(10)
    acked, retried, started, held = deliveries[:2], deliveries[2:3], deliveries[3:4], deliveries[4:]
    for delivery in acked:
        consumer.ack(delivery)
    assert consumer.retry(retried[0], 0)
    assert not consumer.retry(retried[0], 0), "settled once: a second settle is refused"
    consumer.ack(retried[0])  # ignored: already settled
    consumer.mark_started(started[0])
    released = consumer.release_unstarted()
    assert set(released) == set(held), "only messages no job of which started go back"
    assert all(d.state is DeliveryState.SETTLED for d in released)
    assert consumer.held_count == 1  # the started one
    deadline = time.monotonic() + 10
    while consumer.deletes_pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert consumer.close() is None  # deletes went out; the started one is released
    visible, in_flight = queue_counts(sqs, queue.queue_url)
    assert (visible, in_flight) == (4, 0), "2 deleted; retried, released, started back"
