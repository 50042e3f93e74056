"""A webhook that trickles its answer must not hold a stopping worker: real worker
processes, each ending a batch whose ``batch.complete`` goes to a trickling webhook.
One gets SIGTERM (it exits by IMG2IMG_STOP_DEADLINE), the other SIGTERM twice (it exits
within seconds). Neither loses the announcement: the last job's message goes back for
its redelivery to announce the batch."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.batch_runs import enqueue_folder, image_folder, new_fleet, result_records
from tests.support.fleet import WorkerProcess, queue_counts, worker_env
from tests.support.slow_http import TricklingServer

pytestmark = pytest.mark.timeout(300)
STOP_DEADLINE = 4.0


def _stopped_worker(moto_endpoint: str, model_cache: Path, tmp: Path, name: str,
                    webhook: TricklingServer) -> dict:
    resources, s3, sqs = new_fleet(moto_endpoint, name)
    enqueue_folder(resources, image_folder(tmp / name, 2), name)
    env = worker_env(resources, model_cache, tmp, webhook_url=webhook.url,
                     stop_deadline=STOP_DEADLINE, health_file=str(tmp / f"{name}.health"))
    worker = WorkerProcess(env)
    return {"resources": resources, "s3": s3, "sqs": sqs, "worker": worker}


def _wait(run: dict) -> None:
    run["code"] = run["worker"].wait(timeout=120)
    run["seconds"] = time.monotonic() - run["signalled"]


def _both_done(run: dict) -> bool:
    records = result_records(run["s3"], run["resources"].bucket)
    return len(records) == 2 and all(r["status"] == "done" for r in records)


@pytest.fixture(scope="module")
def stopped_runs(moto_endpoint: str, model_cache: Path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slow-webhook")
    webhook = TricklingServer(seconds_per_byte=0.5)
    runs = {"once": _stopped_worker(moto_endpoint, model_cache, tmp, "once", webhook),
            "twice": _stopped_worker(moto_endpoint, model_cache, tmp, "twice", webhook)}
    deadline = time.monotonic() + 240
    pending = dict(runs)
    while pending and time.monotonic() < deadline:
        for name, run in list(pending.items()):
            if _both_done(run):
                # Both records are written: the worker now waits on the batch's event.
                time.sleep(1.0)
                run["signalled"] = time.monotonic()
                run["worker"].signal(signal.SIGTERM)
                if name == "twice":
                    time.sleep(0.5)
                    run["worker"].signal(signal.SIGTERM)
                del pending[name]
        time.sleep(0.2)
    assert not pending, f"never finished their jobs: {list(pending)}"
    waiters = [threading.Thread(target=_wait, args=(run,)) for run in runs.values()]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join(timeout=150)
    for run in runs.values():
        run["claim"] = json.loads(run["s3"].get_object(
            Bucket=run["resources"].bucket,
            Key=f"out/_batches/{'once' if run is runs['once'] else 'twice'}/complete.json"
        )["Body"].read())
        time.sleep(0.5)
        run["queue"] = queue_counts(run["sqs"], run["resources"].queue_url)
    webhook.close()
    return runs


def test_one_sigterm_ends_a_slow_delivery_at_the_stop_deadline(stopped_runs):
    run = stopped_runs["once"]
    assert run["code"] == 0, run["worker"].lines[-20:]
    assert run["seconds"] < STOP_DEADLINE + 6, f"exited {run['seconds']:.1f} s after SIGTERM"
    assert any("cut by the stop" in e.get("message", "") for e in run["worker"].logs())


def test_two_sigterms_end_the_worker_within_seconds(stopped_runs):
    run = stopped_runs["twice"]
    assert run["seconds"] < 4.0, f"exited {run['seconds']:.1f} s after the first SIGTERM"
    assert any("second signal" in e.get("message", "") for e in run["worker"].logs())


@pytest.mark.parametrize("name", ["once", "twice"])
def test_the_batch_announcement_is_left_for_the_redelivery(stopped_runs, name):
    run = stopped_runs[name]
    assert run["claim"]["announced"] is False
    # The batch's last message is back on the queue, for a worker to announce it.
    assert run["queue"][0] + run["queue"][1] == 1, run["queue"]
