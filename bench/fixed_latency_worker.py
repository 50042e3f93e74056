"""One fleet worker in its own process, with bench/overlap_bench.py's fixed-latency engine.

Everything but the GPU is the production path: ``worker.fleet.service.Worker`` with its
receiver, I/O threads, batcher, conditional PUTs, records and batched deletes, against
the S3+SQS at ``--endpoint``. Several of these are the "real fleet" the capacity
planner is checked against (bench/planner_check.py). On exit it writes a JSON report:
the worker's summary and the times (``time.perf_counter``, the system-wide monotonic
clock on Linux, so reports of several processes compare) of every engine call,
receive and delete.

    python -m bench.fixed_latency_worker --endpoint http://127.0.0.1:5000 \
        --queue-url URL --latency 1.0 --batch 8 --report worker-1.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, help="S3 and SQS endpoint (moto)")
    p.add_argument("--queue-url", required=True)
    p.add_argument("--latency", type=float, required=True, help="engine seconds per batch")
    p.add_argument("--batch", type=int, default=8, help="IMG2IMG_MAX_BATCH_SIZE")
    p.add_argument("--prefetch-batches", type=int, default=2)
    p.add_argument("--io-threads", type=int, default=4)
    p.add_argument("--receive-wait", type=int, default=1, help="long poll seconds")
    p.add_argument("--exit-when-idle", type=float, default=3.0)
    p.add_argument("--worker-id", default=f"fixed-latency-{os.getpid()}")
    p.add_argument("--ready-file", type=Path, default=None,
                   help="written once the worker is built, just before it polls")
    p.add_argument("--report", type=Path, required=True)
    args = p.parse_args(argv)
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)

    from bench.overlap_probes import FixedLatencyEngine, timed_queue_class
    from common.aws import make_session, s3_client, sqs_client
    from worker.fleet.object_clients import object_client
    from worker.fleet.service import Worker
    from worker.fleet.storage import S3Storage
    from worker.settings import WorkerSettings

    state = Path(tempfile.mkdtemp(prefix="fixed-latency-worker-"))
    settings = WorkerSettings(
        queue_url=args.queue_url, max_batch_size=args.batch,
        prefetch_batches=args.prefetch_batches, receive_wait_seconds=args.receive_wait,
        visibility_timeout=120, io_threads=args.io_threads, health_file=state / "health",
        model_cache=state / "models", allowed_models=["tiny"], release_backoff_seconds=0,
        allowed_inputs=[], allowed_outputs=[])
    pool = args.io_threads + 4
    engine = FixedLatencyEngine(args.latency)
    queue = timed_queue_class()(sqs_client(endpoint_url=args.endpoint,
                                           max_pool_connections=pool), args.queue_url)
    session = make_session()
    s3 = s3_client(session, endpoint_url=args.endpoint, max_pool_connections=pool,
                   max_attempts=1)
    storage = S3Storage(s3, objects=object_client(settings.s3_client, s3, session))
    worker = Worker(settings, engine, queue, storage, worker_id=args.worker_id)
    if args.ready_file is not None:
        args.ready_file.write_text("ready")
    summary = worker.run(exit_when_idle=args.exit_when_idle)
    args.report.write_text(json.dumps({
        "worker_id": args.worker_id, "clock": "time.perf_counter",
        "done": summary.done, "failed": summary.failed, "released": summary.released,
        "duplicates": summary.duplicates, "fatal": worker.fatal,
        "engine_calls": engine.calls, "receives": queue.receives, "deletes": queue.deletes,
    }))
    return 1 if worker.fatal else 0


if __name__ == "__main__":
    raise SystemExit(main())
