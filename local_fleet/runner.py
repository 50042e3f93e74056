"""The whole fleet on one machine: embedded S3+SQS, the producer, worker processes.

``make run`` runs this over data/input_images with the tiny model, offline:
1. start an embedded S3+SQS and create the bucket, queue and DLQ (as infra/ would);
2. start ``img2img-worker serve`` process(es) (logs under the output folder's logs/)
   and wait until each polls the queue, so each gets its share of the jobs;
3. ``img2img-producer enqueue`` uploads the folder and enqueues one job per image;
4. follow the batch with ``img2img-producer status --watch``, then stop the workers;
5. copy the outputs and their result records to the output folder (in place of an
   earlier run's outputs) and print a summary.
``--keep`` keeps the embedded S3+SQS up afterwards, ``--only-aws`` starts only it. A
Ctrl-C stops the workers at once and waits for them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.aws import s3_client, sqs_client
from common.failures import failure_lines
from common.folders import output_name, scan_images
from common.gallery import write_gallery
from common.results_file import read_results
from contract.result import FINAL_STATUSES
from local_fleet.embedded_aws import FleetResources, create_fleet_resources, start_moto_server
from local_fleet.workers import WorkerGroup, WorkerShare
from worker.engine.model_refs import local_folder
from worker.settings import BUILTIN_ALIASES

BATCH_ID = "local-fleet"
UPLOAD_PREFIX = "inputs/"
OUTPUT_PREFIX = "outputs/"
LOGS_FOLDER = "logs"  # the workers' JSON logs, one file each, under the output folder
WORKER_START_SECONDS = 300.0  # importing torch and diffusers on a slow disk
WORKER_IDLE_EXIT = 60  # the runner stops its workers; this only bounds orphans


def _bin(name: str) -> str:
    """The console script next to this interpreter (the venv's), else on PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=Path("data/input_images"))
    parser.add_argument("--output", type=Path, default=Path("data/output_images"))
    parser.add_argument("--model", action="append", default=None,
                        help="model alias/id/folder (repeatable); default: tiny")
    parser.add_argument("--prompt", action="append", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="default: the model family's")
    parser.add_argument("--strength", type=float, default=0.75)
    parser.add_argument("--max-side", type=int, default=None,
                        help="default: the model family's")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true",
                        help="after the run, keep the embedded S3+SQS up (until Ctrl-C) for "
                        "status, fetch and gallery")
    parser.add_argument("--only-aws", action="store_true",
                        help="only bring up the embedded S3+SQS (bucket, queue, DLQ), until "
                        "Ctrl-C: run the producer and workers yourself")
    parser.add_argument("--port", type=int, default=0,
                        help="the embedded S3+SQS's port (default: any free one)")
    args = parser.parse_args(argv)
    # A folder (/abs/path or ./rel/path) goes to the fleet as its absolute path.
    models = [str(folder) if (folder := local_folder(m)) else m for m in args.model or ["tiny"]]
    if not args.only_aws and not args.input.is_dir():
        print(f"error: input folder {args.input} does not exist", file=sys.stderr)
        return 2

    for key, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    server, endpoint = start_moto_server(port=args.port)
    try:
        s3, sqs = s3_client(endpoint_url=endpoint), sqs_client(endpoint_url=endpoint)
        resources = create_fleet_resources(s3, sqs, endpoint_url=endpoint)
        print(f"embedded S3+SQS at {endpoint}: bucket {resources.bucket}, queue "
              f"{resources.queue_url.rsplit('/', 1)[-1]} with DLQ (maxReceiveCount "
              f"{resources.max_receive_count})", flush=True)
        code = 0 if args.only_aws else _run_fleet(args, models, resources, s3, sqs)
        if args.keep or args.only_aws:
            _hold_open(resources)
        else:
            print("the embedded S3+SQS stops with this run; `make run KEEP=1` keeps it up "
                  "for status, fetch and gallery")
        return code
    except KeyboardInterrupt:
        print("interrupted: the workers were stopped", file=sys.stderr)
        return 130
    finally:
        server.stop()


def _hold_open(resources: FleetResources) -> None:
    """Print how to reach the embedded S3+SQS from another shell; wait for Ctrl-C."""
    exports = {**resources.environment(), "IMG2IMG_BUCKET": resources.bucket,
               "IMG2IMG_OUTPUT_PREFIX": OUTPUT_PREFIX}
    print("the embedded S3+SQS stays up until Ctrl-C; in another shell:")
    for key, value in exports.items():
        print(f"export {key}={shlex.quote(value)}")
    print(f"img2img-producer status --batch-id {BATCH_ID}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("embedded S3+SQS stopped")


def _run_fleet(args: argparse.Namespace, models: list[str], resources: FleetResources,
               s3: Any, sqs: Any) -> int:
    images, _ = scan_images(args.input)
    share = WorkerShare.of(len(images), args.workers, args.batch_size)
    env = dict(os.environ, **resources.environment())
    env.update({
        "IMG2IMG_ALLOWED_MODELS": ",".join(sorted({*models, *BUILTIN_ALIASES})),
        "IMG2IMG_ALLOWED_INPUTS": f"s3://{resources.bucket}/{UPLOAD_PREFIX}",
        "IMG2IMG_ALLOWED_OUTPUTS": f"s3://{resources.bucket}/{OUTPUT_PREFIX}",
        "IMG2IMG_MAX_BATCH_SIZE": str(share.batch_size),
        "IMG2IMG_PREFETCH_BATCHES": str(share.prefetch_batches),
        "IMG2IMG_RECEIVE_WAIT_SECONDS": "2",
    })
    threads = str(max(1, (os.cpu_count() or 1) // args.workers))
    workers = WorkerGroup.start(
        [_bin("img2img-worker"), "serve", "--exit-when-idle", str(WORKER_IDLE_EXIT)],
        [dict(env, OMP_NUM_THREADS=threads, IMG2IMG_WORKER_ID=f"local-worker-{i + 1}",
              IMG2IMG_HEALTH_FILE=str(Path(tempfile.gettempdir())
                                      / f"img2img-local-worker-{os.getpid()}-{i + 1}.health"),
              IMG2IMG_LOG_LEVEL="WARNING") for i in range(args.workers)],
        args.output / LOGS_FOLDER)
    try:
        # Every worker polls before the first job is sent, so each gets its share.
        problem = workers.wait_ready(timeout=WORKER_START_SECONDS)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        started = time.monotonic()
        if subprocess.run(_enqueue_command(args, models, resources), env=env,
                          start_new_session=True).returncode != 0:
            return 2
        watch = subprocess.run(
            [_bin("img2img-producer"), "status", "--batch-id", BATCH_ID, "--output",
             f"s3://{resources.bucket}/{OUTPUT_PREFIX}", "--watch", "--interval", "1",
             "--timeout", str(args.timeout)], env=env, start_new_session=True)
        workers.stop()  # idle by now: each ends its long poll and exits
        seconds = time.monotonic() - started
    finally:
        if workers.running():  # a Ctrl-C, or the run ended early
            workers.stop(at_once=True)
    done, failed = _collect(s3, resources.bucket, args.output, args.input)
    dlq = int(sqs.get_queue_attributes(QueueUrl=resources.dlq_url, AttributeNames=[
        "ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"])
    print(f"fleet of {args.workers} worker(s): done {done}, failed {failed}, in DLQ {dlq}, "
          f"{seconds:.1f} s; outputs and results.jsonl in {args.output}")
    print(f"gallery: {args.output / 'index.html'}")
    for line in failure_lines(read_results(args.output / "results.jsonl"),
                              more=f"all in {args.output / 'results.jsonl'}"):
        print(line, file=sys.stderr)
    if failed or dlq:
        print(f"the workers' logs: {args.output / LOGS_FOLDER}")
    return 0 if (watch.returncode == 0 and failed == 0 and dlq == 0) else 1


def _enqueue_command(args: argparse.Namespace, models: list[str],
                     resources: FleetResources) -> list[str]:
    command = [_bin("img2img-producer"), "enqueue", str(args.input),
               "--bucket", resources.bucket, "--upload-prefix", UPLOAD_PREFIX,
               "--output", f"s3://{resources.bucket}/{OUTPUT_PREFIX}",
               "--batch-id", BATCH_ID, "--strength", str(args.strength)]
    for flag, value in (("--steps", args.steps), ("--max-side", args.max_side)):
        if value is not None:
            command += [flag, str(value)]
    for model in models:
        command += ["--model", model]
    for prompt in args.prompt or []:
        command += ["--prompt", prompt]
    return command


def _remove_previous_outputs(output_dir: Path) -> None:
    """The images an earlier run copied here (its results.jsonl names them): a run
    leaves only its own outputs beside its results.jsonl. Other files are kept."""
    root, previous = output_dir.resolve(), output_dir / "results.jsonl"
    for record in read_results(previous) if previous.is_file() else []:
        local = record.get("local_output")
        if isinstance(local, str) and Path(local).resolve().is_relative_to(root):
            Path(local).unlink(missing_ok=True)


def _collect(s3, bucket: str, output_dir: Path, input_dir: Path) -> tuple[int, int]:
    """Copy outputs (named after their inputs, as the local folder mode names them) and
    write results.jsonl from the records, and the gallery next to them."""
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous_outputs(output_dir)
    done = failed = 0
    taken: set[Path] = set()
    records = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                             Prefix=OUTPUT_PREFIX):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".json") and "/_batches/" not in obj["Key"]:
                records.append(json.loads(
                    s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()))
    records = sorted((r for r in records if r.get("status") in FINAL_STATUSES),
                     key=lambda r: r["input"])
    with (output_dir / "results.jsonl").open("w") as results:
        for record in records:
            relative = Path(record["input"].split("/", 3)[3].removeprefix(UPLOAD_PREFIX))
            record["local_input"] = str(input_dir / relative)
            if record["status"] == "done":
                done += 1
                key = record["output"].split("/", 3)[3]
                local = output_dir / output_name(relative, Path(key).suffix.lstrip("."), taken)
                local.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, key, str(local))
                record["local_output"] = str(local)
            else:
                failed += 1
            results.write(json.dumps(record) + "\n")
    write_gallery(records, output_dir, title="img2img fleet: local run")
    return done, failed


if __name__ == "__main__":
    sys.exit(main())
