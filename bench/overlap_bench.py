"""Fleet overlap benchmark: does the worker keep the engine busy, and what does the
plumbing around each job cost?

The real ``worker.fleet.service.Worker`` runs in-process against a moto S3+SQS server, with
the engine replaced by a test double of fixed latency (it sleeps ``latency`` seconds per
batch, whatever the batch size, and returns the input images). Everything else is the
production path: SQS long polls, the I/O thread pool downloading and decoding PNGs, the
batcher, encoding and conditional PUTs of outputs, result records, batch markers and
batched deletes.

Reported:
- engine busy fraction = sum of generate() time / (first receive -> last delete), also
  per quarter of the run, and the engine's waits between batches;
- jobs/s against the engine's ceiling (batch / latency);
- plumbing per job: the worker process's CPU ms per job (the feeder and moto run in
  other processes), split by stage (each S3 request kind, SQS receive and delete,
  decode, encode); and the wall ms of each stage, which includes waiting on moto.

    PYTHONPATH=. python -m bench.overlap_bench --jobs 400 --latency 0.2 --batch 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.devstats import machine_info
from bench.overlap_inputs import (
    MAX_VISIBLE,
    Feeder,
    feed_in_subprocess,
    moto_alone,
    upload_and_make_jobs,
    write_batch_manifest,
)
from bench.overlap_probes import (
    MOTO_SERVERS,
    FixedLatencyEngine,
    ImageCpuMeter,
    RequestMeter,
    moto_subprocess,
    process_cpu_seconds,
    timed_queue_class,
)

# -- the test doubles and timing wrappers -----------------------------------------------


# -- moto -------------------------------------------------------------------------------


# -- inputs -----------------------------------------------------------------------------


# -- the run ----------------------------------------------------------------------------

def ms(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"mean": round(1000 * statistics.fmean(ordered), 2),
            "p50": round(1000 * ordered[len(ordered) // 2], 2),
            "p95": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
            "max": round(1000 * ordered[-1], 2),
            "n": len(ordered)}


def run_overlap(*, jobs: int = 400, latency: float = 0.2, batch: int = 8, size: int = 512,
                io_threads: int | None = None, prefetch_batches: int = 2,
                endpoint: str | None = None, receive_wait: int = 1,
                output_format: str = "png", input_format: str = "png",
                s3_client_name: str | None = None,
                moto_server: str = "keepalive") -> dict[str, Any]:
    from common.aws import make_session, s3_client, sqs_client
    from local_fleet.embedded_aws import create_fleet_resources
    from worker.fleet.object_clients import DirectObjects, direct_objects_for, object_client
    from worker.fleet.service import Worker
    from worker.fleet.storage import S3Storage
    from worker.settings import WorkerSettings

    if io_threads is None:
        io_threads = WorkerSettings.model_fields["io_threads"].default
    if s3_client_name is None:
        s3_client_name = WorkerSettings.model_fields["s3_client"].default
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    with contextlib.ExitStack() as stack:
        moto_mode, moto_pid = "given endpoint", None
        if endpoint is None:
            endpoint, moto_pid = stack.enter_context(moto_subprocess(moto_server))
            moto_mode = f"subprocess, {moto_server} server"
        pool = io_threads + 4
        s3 = s3_client(endpoint_url=endpoint, max_pool_connections=pool)
        sqs = sqs_client(endpoint_url=endpoint, max_pool_connections=pool)
        name = "bench" + uuid.uuid4().hex[:10]
        fleet = create_fleet_resources(s3, sqs, endpoint_url=endpoint, bucket=f"b-{name}",
                                       queue_name=f"q-{name}", visibility_timeout=120)
        params = dict(model="tiny", prompt="overlap bench", steps=25, strength=0.6,
                      max_side=size, output_format=output_format)
        job_list, input_bytes = upload_and_make_jobs(s3, fleet.bucket, jobs, size, params,
                                                     input_format)
        write_batch_manifest(s3, fleet.bucket, fleet.queue_url, job_list)
        session = make_session()
        # moto alone is driven by the cheapest client there is, so that it measures moto;
        # before the run and after it, as moto slows down as its state grows.
        def measure_moto_alone() -> float:
            return moto_alone(direct_objects_for(s3, session), sqs, fleet.bucket,
                              job_list[0].input.key, output_format, io_threads)

        capacity_before = measure_moto_alone()

        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="overlap-")))
        settings = WorkerSettings(
            queue_url=fleet.queue_url, max_batch_size=batch, receive_wait_seconds=receive_wait,
            visibility_timeout=120, io_threads=io_threads, prefetch_batches=prefetch_batches,
            health_file=tmp / "health", model_cache=tmp / "models", allowed_models=["tiny"],
            release_backoff_seconds=0, allowed_inputs=[], allowed_outputs=[])
        engine = FixedLatencyEngine(latency)
        queue = timed_queue_class()(sqs, fleet.queue_url)
        # The worker's own S3 client, as the service makes it (no botocore retries).
        worker_s3 = s3_client(session, endpoint_url=endpoint, max_pool_connections=pool,
                              max_attempts=1)
        objects = object_client(s3_client_name, worker_s3, session)
        requests = RequestMeter()
        requests.install(worker_s3)
        if isinstance(objects, DirectObjects):
            requests.install_direct(objects)
        storage = S3Storage(worker_s3, objects=objects)
        worker = Worker(settings, engine, queue, storage, worker_id="overlap-bench")

        bodies = [job.to_json() for job in job_list]
        feeder = Feeder(sqs, fleet.queue_url, bodies)
        feeder.send_some(MAX_VISIBLE)
        feeding = multiprocessing.get_context("spawn").Process(
            target=feed_in_subprocess, args=(endpoint, fleet.queue_url, feeder.bodies),
            daemon=True, name="feeder")
        feeding.start()
        meter = ImageCpuMeter()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        moto_cpu0 = process_cpu_seconds(moto_pid)
        # The worker prints one CloudWatch EMF line per job and per batch to stdout.
        with contextlib.redirect_stdout(io.StringIO()), meter.installed():
            summary = worker.run(max_jobs=jobs, exit_when_idle=30)
        cpu_seconds, run_seconds = time.process_time() - cpu0, time.perf_counter() - wall0
        moto_cpu = process_cpu_seconds(moto_pid) - moto_cpu0
        feeding.join(timeout=10)
        if feeding.exitcode != 0:
            raise RuntimeError(f"the feeder process failed (exit code {feeding.exitcode})")

        capacity_after = measure_moto_alone()
        capacity = (capacity_before + capacity_after) / 2
        records = []
        for job in job_list:
            body = s3.get_object(Bucket=fleet.bucket, Key=job.output.key + ".json")["Body"]
            records.append(json.loads(body.read()))

    first_receive = min(s for s, _, n in queue.receives if n)
    last_delete = max(e for _, e, _ in queue.deletes)
    window = last_delete - first_receive
    busy = sum(e - s for s, e, _ in engine.calls)
    gen_span = max(e for _, e, _ in engine.calls) - min(s for s, _, _ in engine.calls)
    received = sum(n for *_, n in queue.receives)
    deleted = sum(n for *_, n in queue.deletes)
    receive_s = sum(e - s for s, e, n in queue.receives if n)
    delete_s = sum(e - s for s, e, _ in queue.deletes)

    timing = defaultdict(list)
    for record in records:
        for k, v in (record.get("timings") or {}).items():
            timing[k].append(v)
    recorded = {k: ms(v) for k, v in timing.items() if k not in ("batch_size", "inference")}
    four = [sum(r["timings"].get(k, 0) for k in ("download", "decode", "encode", "upload"))
            for r in records]
    receive_share = receive_s / max(1, received)
    delete_share = delete_s / max(1, deleted)
    batches = [n for *_, n in engine.calls]
    calls = sorted(engine.calls)
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(calls)]
    cpu_stages = {f"s3 {k}": v for k, v in sorted(requests.cpu_seconds.items())}
    cpu_stages.update({f"sqs {k}": v for k, v in queue.cpu_seconds.items()})
    cpu_stages.update(meter.cpu_seconds)
    cpu_stages["everything else (threads, records, logs)"] = max(
        0.0, cpu_seconds - sum(cpu_stages.values()))
    return {
        "kind": "overlap",
        "machine": machine_info(),
        "moto": moto_mode,
        "config": {"jobs": jobs, "latency_s": latency, "batch": batch, "size": size,
                   "input_format": input_format, "input_bytes": input_bytes,
                   "output_format": output_format,
                   "s3_client": s3_client_name,
                   "io_threads": io_threads,
                   "prefetch_batches": prefetch_batches, "receive_wait_s": receive_wait,
                   "max_visible_messages": MAX_VISIBLE},
        "done": summary.done, "failed": summary.failed, "released": summary.released,
        "window_s": round(window, 3),
        "worker_run_s": round(run_seconds, 3),
        "jobs_per_s": round(jobs / window, 3),
        "engine_ceiling_jobs_per_s": round(batch / latency, 3),
        "moto_alone_jobs_per_s": round(capacity, 1),
        "moto_alone_jobs_per_s_before_after": [round(capacity_before, 1),
                                               round(capacity_after, 1)],
        "jobs_per_s_vs_moto_alone": round(jobs / window / capacity, 3),
        "engine_busy_fraction": round(busy / window, 4),
        "engine_busy_fraction_first_to_last_batch": round(busy / gen_span, 4),
        "engine_wait_between_batches_ms": ms(gaps),
        "engine_busy_fraction_by_quarter": busy_by_quarter(calls, first_receive, last_delete),
        "startup_s": round(min(s for s, _, _ in engine.calls) - first_receive, 3),
        "tail_s": round(last_delete - max(e for _, e, _ in engine.calls), 3),
        "batches": len(batches), "mean_batch_size": round(statistics.fmean(batches), 2),
        "full_batches": sum(1 for b in batches if b == batch),
        "worker_cpu_ms_per_job": round(1000 * cpu_seconds / jobs, 2),
        "worker_cpu_ms_per_job_by_stage": {k: round(1000 * v / jobs, 2)
                                           for k, v in cpu_stages.items()},
        "plumbing_ms_per_job_recorded_4_stages": ms(four),
        "recorded_stage_ms": recorded,
        "s3_requests_per_job": round(sum(requests.counts.values()) / jobs, 3),
        "s3_requests_per_job_by_kind": {k: round(v / jobs, 3)
                                        for k, v in sorted(requests.counts.items())},
        "receive_ms_per_message": round(1000 * receive_share, 2),
        "receive_calls": len(queue.receives),
        "empty_receive_calls": sum(1 for *_, n in queue.receives if not n),
        "delete_ms_per_message": round(1000 * delete_share, 2),
        "delete_calls": len(queue.deletes),
        "worker_process_cpu_s": round(cpu_seconds, 3),
        "worker_process_cpu_cores_used": round(cpu_seconds / run_seconds, 3),
        "moto_process_cpu_cores_used": round(moto_cpu / run_seconds, 3) if moto_pid else None,
        "cpu_cores": os.cpu_count(),
        "engine_idle_ms_per_job": round(1000 * (window - busy) / jobs, 2),
    }


def busy_by_quarter(calls: list[tuple[float, float, int]], start: float,
                    end: float) -> list[float]:
    """The engine's busy fraction in each quarter of the window: a falling figure means
    the plumbing slows as the run goes on (a growing moto, say), not a start-up cost."""
    quarter = (end - start) / 4
    fractions = []
    for i in range(4):
        lo, hi = start + i * quarter, start + (i + 1) * quarter
        busy = sum(max(0.0, min(e, hi) - max(s, lo)) for s, e, _ in calls)
        fractions.append(round(busy / quarter, 3))
    return fractions


def markdown(result: dict) -> str:
    c = result["config"]
    four = result["plumbing_ms_per_job_recorded_4_stages"] or {}
    rows = [
        ("jobs / batch / engine latency", f"{c['jobs']} / {c['batch']} / "
                                          f"{1000 * c['latency_s']:.0f} ms"),
        ("input / output", f"{c['size']} px {c['input_format']}, "
                           f"{c['input_bytes'] / 1024:.0f} KiB / "
                           f"{c['output_format']}"),
        ("moto / the worker's S3 object client", f"{result['moto']} / {c['s3_client']}"),
        ("done / failed / released", f"{result['done']} / {result['failed']} / "
                                     f"{result['released']}"),
        ("window (first receive -> last delete)", f"{result['window_s']:.2f} s"),
        ("jobs/s (engine ceiling)", f"{result['jobs_per_s']:.1f} "
                                    f"({result['engine_ceiling_jobs_per_s']:.1f})"),
        ("moto alone: job-equivalents/s (no worker; same threads; mean of before and "
         "after the run)",
         f"{result['moto_alone_jobs_per_s']:.1f} "
         f"({' / '.join(map(str, result['moto_alone_jobs_per_s_before_after']))}; jobs/s is "
         f"{100 * result['jobs_per_s_vs_moto_alone']:.0f} % of it)"),
        ("engine busy fraction", f"{100 * result['engine_busy_fraction']:.1f} %"),
        ("busy, first to last batch",
         f"{100 * result['engine_busy_fraction_first_to_last_batch']:.1f} %"),
        ("busy by quarter of the window",
         " / ".join(f"{100 * f:.0f} %" for f in result["engine_busy_fraction_by_quarter"])),
        ("engine wait between batches ms (mean, p95, max)",
         "{mean}, {p95}, {max}".format(**result["engine_wait_between_batches_ms"])),
        ("engine idle ms per job ((window - busy) / jobs)",
         f"{result['engine_idle_ms_per_job']:.2f}"),
        ("start-up / tail", f"{result['startup_s']:.2f} s / {result['tail_s']:.2f} s"),
        ("batches (full) / mean size", f"{result['batches']} ({result['full_batches']}) / "
                                       f"{result['mean_batch_size']}"),
        ("**worker CPU ms/job** (all worker threads; the engine double sleeps)",
         f"**{result['worker_cpu_ms_per_job']:.1f}**"),
    ]
    for stage, value in result["worker_cpu_ms_per_job_by_stage"].items():
        rows.append((f"  CPU ms/job: {stage}", f"{value:.2f}"))
    rows.append(("**S3 requests/job**", f"**{result['s3_requests_per_job']:.2f}**"))
    for kind, value in result["s3_requests_per_job_by_kind"].items():
        rows.append((f"  requests/job: {kind}", f"{value:.3f}"))
    rows += [
        ("download+decode+encode+upload ms/job (mean, p50, p95)",
         f"{four.get('mean')}, {four.get('p50')}, {four.get('p95')}"),
    ]
    for stage, stats in sorted(result["recorded_stage_ms"].items()):
        rows.append((f"  {stage} ms (mean, p95)", f"{stats['mean']}, {stats['p95']}"))
    rows += [
        ("  SQS receive ms/message", f"{result['receive_ms_per_message']}"),
        ("  SQS delete ms/message", f"{result['delete_ms_per_message']}"),
        ("worker process CPU cores used", f"{result['worker_process_cpu_cores_used']}"),
        ("moto process CPU cores used (of the machine's cores)",
         f"{result['moto_process_cpu_cores_used']} (of {result['cpu_cores']})"),
    ]
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=400)
    p.add_argument("--latency", type=float, default=0.2, help="engine seconds per batch")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--format", default="png", choices=("png", "jpg", "webp"),
                   help="output format of the jobs")
    p.add_argument("--input-format", default="png", choices=("png", "jpg"),
                   help="format of the photo-like inputs")
    p.add_argument("--io-threads", type=int, default=None,
                   help="I/O threads (default: the worker's IMG2IMG_IO_THREADS default)")
    p.add_argument("--prefetch-batches", type=int, default=2)
    p.add_argument("--endpoint", default=None, help="use this S3/SQS endpoint (moto) "
                   "instead of starting moto in a subprocess")
    p.add_argument("--s3-client", default=None, choices=("direct", "botocore"),
                   help="the worker's object client (default: IMG2IMG_S3_CLIENT's default)")
    p.add_argument("--moto-server", default="keepalive", choices=MOTO_SERVERS,
                   help="keepalive: moto behind an HTTP/1.1 keep-alive server like S3's; "
                        "werkzeug: moto's own server, a new connection per request")
    p.add_argument("--out", default="bench-results/overlap.json")
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)
    result = run_overlap(jobs=args.jobs, latency=args.latency, batch=args.batch,
                         size=args.size, io_threads=args.io_threads,
                         prefetch_batches=args.prefetch_batches, endpoint=args.endpoint,
                         output_format=args.format, input_format=args.input_format,
                         s3_client_name=args.s3_client, moto_server=args.moto_server)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    table = markdown(result)
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
