"""Does the capacity planner drain a queue as fast as real workers do?

Real: ``--workers`` processes of bench/fixed_latency_worker.py (the real
``worker.fleet.service.Worker``, only the GPU replaced by a fixed latency per batch) against
an embedded moto S3+SQS (local_fleet/embedded_aws.py). The jobs go out on a schedule
fixed in advance (all at once, or ``--rate`` per second), so what the workers do cannot
change when jobs arrive. The drain is measured from the first send to the last delete.

Simulated: capacity_planner's ``FleetSimulator`` on the same fleet (fixed, warm), batch
size, prefetch, engine latency and the send times the real run recorded. The only
inputs the simulator gets that the workers do not are its plumbing times on moto
(``MOTO_PREPARE_SECONDS``, ``MOTO_WRITE_SECONDS``), which count once at each end.

    PYTHONPATH=. python -m bench.planner_check --jobs 960 --workers 4 --batch 8 \
        --latency 1.0 --rate 35 --out bench-results/planner-check.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from capacity_planner.fleet_inputs import EngineSpeed, WorkerPipeline
from capacity_planner.outcome import SimulationResult
from capacity_planner.simulator import FleetSimulator
from capacity_planner.stack_policy import StopTimings
from capacity_planner.workload import Workload

REPO = Path(__file__).resolve().parent.parent
# Receive -> ready (claim PUT, input GET, decode) and batch end -> deleted (encode,
# output PUT, record, marker, batched delete) on moto on one machine: the simulator's
# plumbing for this check.
MOTO_PREPARE_SECONDS = 0.05
MOTO_WRITE_SECONDS = 0.15
# SIGTERM never comes in this check; the simulator still wants the numbers.
NO_STOPS = StopTimings(stop_deadline=100, spot_notice=120, spot_drain_lead=30)
SEND_BATCH = 10  # SendMessageBatch entries


@dataclass(frozen=True)
class CheckSettings:
    jobs: int = 144
    workers: int = 3
    batch: int = 4
    prefetch_batches: int = 2
    latency: float = 0.8
    rate: float | None = None  # jobs per second; None: all at once
    size: int = 64  # input side in pixels: small, so moto and the CPU are not the limit
    io_threads: int = 4


@dataclass(frozen=True)
class RealRun:
    drain_seconds: float
    first_result_seconds: float
    sends: list[tuple[float, int]]
    done: int
    failed: int
    # moto's ReceiveMessage and conditional PUT are not atomic across its request
    # threads: under load two workers can get, claim and do the same job. Real SQS and
    # S3 conditional writes do not let that through; the check counts each job once.
    done_twice: int
    per_worker_done: list[int]
    batches: int
    mean_batch_size: float
    startup_seconds: float
    # How busy the S3/SQS stand-in was: a slow receive that brings few messages means
    # the endpoint, not the workers, set the pace.
    receive_seconds_mean: float
    messages_per_receive: float


def run_real(settings: CheckSettings, endpoint: str, work_dir: Path) -> RealRun:
    """The jobs through ``settings.workers`` worker processes; raises if any job is not
    done exactly once."""
    from bench.overlap_inputs import upload_and_make_jobs
    from common.aws import s3_client, sqs_client
    from local_fleet.embedded_aws import create_fleet_resources

    s3, sqs = s3_client(endpoint_url=endpoint), sqs_client(endpoint_url=endpoint)
    name = "plan" + uuid.uuid4().hex[:10]
    fleet = create_fleet_resources(s3, sqs, endpoint_url=endpoint, bucket=f"b-{name}",
                                   queue_name=f"q-{name}", visibility_timeout=120,
                                   max_receive_count=5)
    params = dict(model="tiny", prompt="planner check", steps=10, strength=0.5,
                  max_side=max(64, settings.size), output_format="jpg")
    jobs, _ = upload_and_make_jobs(s3, fleet.bucket, settings.jobs, settings.size, params,
                                   "jpg")
    bodies = [job.to_json() for job in jobs]

    env = {**os.environ, **fleet.environment(),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs, reports, ready = [], [], []
    started = time.perf_counter()
    for i in range(settings.workers):
        reports.append(work_dir / f"worker-{i}.json")
        ready.append(work_dir / f"worker-{i}.ready")
        log = open(work_dir / f"worker-{i}.log", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "bench.fixed_latency_worker", "--endpoint", endpoint,
             "--queue-url", fleet.queue_url, "--latency", str(settings.latency),
             "--batch", str(settings.batch),
             "--prefetch-batches", str(settings.prefetch_batches),
             "--io-threads", str(settings.io_threads), "--exit-when-idle", "2",
             "--worker-id", f"w{i}", "--ready-file", str(ready[-1]),
             "--report", str(reports[-1])],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log), log))
    try:
        _wait_for(lambda: all(r.exists() for r in ready), 180, procs, "workers to start")
        startup = time.perf_counter() - started
        time.sleep(0.5)  # every receiver is in its first long poll
        t0, sends = _send_on_schedule(sqs, fleet.queue_url, bodies, settings.rate)
        expected = settings.jobs * settings.latency / settings.batch / settings.workers
        _wait_for(lambda: all(p.poll() is not None for p, _ in procs),
                  60 + 5 * expected, procs, "workers to finish")
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    runs = [json.loads(r.read_text()) for r in reports]
    counts = [{k: r[k] for k in ("worker_id", "done", "failed", "duplicates", "fatal")}
              for r in runs]
    not_done = _jobs_not_done(s3, jobs)
    if any(c["fatal"] or c["failed"] for c in counts) or not_done:
        raise RuntimeError(f"the real fleet left {not_done} of {settings.jobs} jobs without "
                           f"a done record: {counts}")
    deletes = [end for r in runs for _, end, n in r["deletes"] if n]
    calls = [n for r in runs for *_, n in r["engine_calls"]]
    receives = [(end - start, n) for r in runs for start, end, n in r["receives"] if n]
    return RealRun(
        drain_seconds=max(deletes) - t0, first_result_seconds=min(deletes) - t0,
        sends=sends, done=settings.jobs, failed=0,
        done_twice=sum(r["done"] for r in runs) - settings.jobs,
        per_worker_done=[r["done"] for r in runs], batches=len(calls),
        mean_batch_size=sum(calls) / len(calls), startup_seconds=startup,
        receive_seconds_mean=sum(s for s, _ in receives) / len(receives),
        messages_per_receive=sum(n for _, n in receives) / len(receives))


def _jobs_not_done(s3: Any, jobs: list[Any]) -> int:
    """How many jobs have no ``done`` result record."""
    from concurrent.futures import ThreadPoolExecutor

    from contract.locations import result_key

    def done(job: Any) -> bool:
        try:
            body = s3.get_object(Bucket=job.output.bucket, Key=result_key(job.output.key))
        except Exception:  # noqa: BLE001 - no record is the answer
            return False
        return json.loads(body["Body"].read()).get("status") == "done"

    with ThreadPoolExecutor(8) as pool:
        return sum(1 for ok in pool.map(done, jobs) if not ok)


def _wait_for(ready: Any, timeout: float, procs: list, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [p.returncode for p, _ in procs if p.poll() not in (None, 0)]
        if dead:
            raise RuntimeError(f"a worker exited with {dead[0]} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def _send_on_schedule(sqs: Any, queue_url: str, bodies: list[str],
                      rate: float | None) -> tuple[float, list[tuple[float, int]]]:
    """Send the bodies as ``Workload`` schedules them; returns the start (perf_counter)
    and each SendMessageBatch's (seconds after the start, jobs)."""
    sends: list[tuple[float, int]] = []
    left = list(bodies)
    t0 = time.perf_counter()
    for at, count in Workload(len(bodies), rate_per_second=rate).chunks():
        with contextlib.suppress(ValueError):
            time.sleep(max(0.0, t0 + at - time.perf_counter()))
        chunk, left = left[:count], left[count:]
        for i in range(0, len(chunk), SEND_BATCH):
            part = chunk[i:i + SEND_BATCH]
            sent_at = time.perf_counter() - t0
            sqs.send_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(k), "MessageBody": body} for k, body in enumerate(part)])
            sends.append((sent_at, len(part)))
    return t0, sends


def simulate(settings: CheckSettings, sends: list[tuple[float, int]]) -> SimulationResult:
    """The planner's answer for the same fleet, settings and send times."""
    return FleetSimulator(
        Workload.recorded(sends),
        engine=EngineSpeed(per_image_seconds=0, per_batch_seconds=settings.latency),
        worker=WorkerPipeline(max_batch_size=settings.batch,
                              prefetch_batches=settings.prefetch_batches,
                              prepare_seconds=MOTO_PREPARE_SECONDS,
                              write_seconds=MOTO_WRITE_SECONDS),
        stop=NO_STOPS, policy=None, warm_tasks=settings.workers).run()


def run_check(settings: CheckSettings, endpoint: str | None = None) -> dict[str, Any]:
    from bench.devstats import machine_info
    from local_fleet.embedded_aws import start_moto_server

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    with contextlib.ExitStack() as stack:
        if endpoint is None:
            server, endpoint = start_moto_server()
            stack.callback(server.stop)
        work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="plancheck-")))
        real = run_real(settings, endpoint, work_dir)
    sim = simulate(settings, real.sends)
    assert sim.drain_seconds is not None
    return {
        "kind": "planner-check",
        "machine": machine_info(),
        "settings": asdict(settings),
        "simulator_plumbing_seconds": {"prepare": MOTO_PREPARE_SECONDS,
                                       "write": MOTO_WRITE_SECONDS},
        "real": {**asdict(real), "sends": len(real.sends),
                 "last_send_seconds": real.sends[-1][0]},
        "simulated": {"drain_seconds": sim.drain_seconds,
                      "first_result_seconds": sim.first_result_seconds,
                      "batches": sim.batches,
                      "mean_batch_size": settings.jobs / sim.batches},
        "drain_ratio": sim.drain_seconds / real.drain_seconds,
        "drain_error": abs(sim.drain_seconds - real.drain_seconds) / real.drain_seconds,
    }


def markdown(result: dict[str, Any]) -> str:
    s, real, sim = result["settings"], result["real"], result["simulated"]
    arrival = "all at once" if s["rate"] is None else f"{s['rate']:g}/s"
    rows = [
        ("jobs / workers / batch / prefetch batches",
         f"{s['jobs']} / {s['workers']} / {s['batch']} / {s['prefetch_batches']}"),
        ("engine latency per batch / arrivals", f"{s['latency']:g} s / {arrival}"),
        ("drain, real (first send -> last delete)", f"{real['drain_seconds']:.2f} s"),
        ("drain, simulated", f"{sim['drain_seconds']:.2f} s"),
        ("simulated / real", f"{result['drain_ratio']:.3f}"),
        ("first result, real / simulated",
         f"{real['first_result_seconds']:.2f} s / {sim['first_result_seconds']:.2f} s"),
        ("batches (mean size), real / simulated",
         f"{real['batches']} ({real['mean_batch_size']:.2f}) / {sim['batches']} "
         f"({sim['mean_batch_size']:.2f})"),
        ("jobs per worker, real (done twice by moto's races)",
         ", ".join(str(n) for n in real["per_worker_done"]) + f" ({real['done_twice']})"),
        ("receives that brought messages, real: mean seconds, messages",
         f"{real['receive_seconds_mean']:.3f} s, {real['messages_per_receive']:.1f}"),
    ]
    return "\n".join(["| measure | value |", "|---|---|"]
                     + [f"| {a} | {b} |" for a, b in rows]) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = CheckSettings()
    p.add_argument("--jobs", type=int, default=defaults.jobs)
    p.add_argument("--workers", type=int, default=defaults.workers)
    p.add_argument("--batch", type=int, default=defaults.batch)
    p.add_argument("--prefetch-batches", type=int, default=defaults.prefetch_batches)
    p.add_argument("--latency", type=float, default=defaults.latency,
                   help="engine seconds per batch, any size")
    p.add_argument("--rate", type=float, default=None,
                   help="jobs sent per second (default: all at once)")
    p.add_argument("--size", type=int, default=defaults.size)
    p.add_argument("--io-threads", type=int, default=defaults.io_threads)
    p.add_argument("--endpoint", default=None, help="an S3/SQS endpoint (default: moto here)")
    p.add_argument("--out", default="bench-results/planner-check.json")
    args = p.parse_args(argv)
    settings = CheckSettings(jobs=args.jobs, workers=args.workers, batch=args.batch,
                             prefetch_batches=args.prefetch_batches, latency=args.latency,
                             rate=args.rate, size=args.size, io_threads=args.io_threads)
    result = run_check(settings, args.endpoint)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
