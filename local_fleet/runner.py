"""The whole fleet on one machine: embedded S3+SQS, the producer, worker processes.

``make run`` runs this over data/input_images with the tiny model, offline:
1. start an embedded S3+SQS and create the bucket, queue and DLQ (as infra/ would);
2. ``img2img-producer enqueue`` uploads the folder and enqueues one job per image;
3. start ``img2img-worker serve`` process(es) until the queue is drained;
4. copy the outputs and their result records to the output folder and print a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.aws import s3_client, sqs_client
from common.folders import output_name
from common.gallery import write_gallery
from contract.result import FINAL_STATUSES
from local_fleet.embedded_aws import create_fleet_resources, start_moto_server
from worker.engine.model_refs import local_folder
from worker.settings import BUILTIN_ALIASES

BATCH_ID = "local-fleet"
UPLOAD_PREFIX = "inputs/"
OUTPUT_PREFIX = "outputs/"


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
    args = parser.parse_args(argv)
    # A folder (/abs/path or ./rel/path) goes to the fleet as its absolute path.
    models = [str(folder) if (folder := local_folder(m)) else m for m in args.model or ["tiny"]]
    if not args.input.is_dir():
        print(f"error: input folder {args.input} does not exist", file=sys.stderr)
        return 2

    for key, value in {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    server, endpoint = start_moto_server()
    try:
        return _run_fleet(args, models, endpoint)
    finally:
        server.stop()


def _run_fleet(args: argparse.Namespace, models: list[str], endpoint: str) -> int:
    s3, sqs = s3_client(endpoint_url=endpoint), sqs_client(endpoint_url=endpoint)
    resources = create_fleet_resources(s3, sqs, endpoint_url=endpoint)
    print(f"embedded S3+SQS at {endpoint}: bucket {resources.bucket}, queue "
          f"{resources.queue_url.rsplit('/', 1)[-1]} with DLQ (maxReceiveCount "
          f"{resources.max_receive_count})")
    env = dict(os.environ, **resources.environment())
    env.update({
        "IMG2IMG_ALLOWED_MODELS": ",".join(sorted({*models, *BUILTIN_ALIASES})),
        "IMG2IMG_ALLOWED_INPUTS": f"s3://{resources.bucket}/{UPLOAD_PREFIX}",
        "IMG2IMG_ALLOWED_OUTPUTS": f"s3://{resources.bucket}/{OUTPUT_PREFIX}",
        "IMG2IMG_MAX_BATCH_SIZE": str(args.batch_size),
        "IMG2IMG_RECEIVE_WAIT_SECONDS": "2",
    })
    enqueue = [_bin("img2img-producer"), "enqueue", str(args.input),
               "--bucket", resources.bucket, "--upload-prefix", UPLOAD_PREFIX,
               "--output", f"s3://{resources.bucket}/{OUTPUT_PREFIX}",
               "--batch-id", BATCH_ID, "--strength", str(args.strength)]
    for flag, value in (("--steps", args.steps), ("--max-side", args.max_side)):
        if value is not None:
            enqueue += [flag, str(value)]
    for model in models:
        enqueue += ["--model", model]
    for prompt in args.prompt or []:
        enqueue += ["--prompt", prompt]
    subprocess.run(enqueue, env=env, check=True)

    cores = os.cpu_count() or 1
    threads = str(max(1, cores // args.workers))
    workers = []
    for index in range(args.workers):
        worker_env = dict(env, OMP_NUM_THREADS=threads,
                          IMG2IMG_WORKER_ID=f"local-worker-{index + 1}",
                          IMG2IMG_HEALTH_FILE=f"/tmp/img2img-local-worker-{index + 1}.health",
                          IMG2IMG_LOG_LEVEL="WARNING")
        workers.append(subprocess.Popen(
            [_bin("img2img-worker"), "serve", "--exit-when-idle", "5"], env=worker_env,
            stdout=subprocess.DEVNULL))
    started = time.monotonic()
    watch = subprocess.run(
        [_bin("img2img-producer"), "status", "--batch-id", BATCH_ID,
         "--output", f"s3://{resources.bucket}/{OUTPUT_PREFIX}", "--watch",
         "--interval", "1"], env=env, timeout=args.timeout)
    for worker in workers:
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.terminate()
            worker.wait(timeout=120)
    seconds = time.monotonic() - started
    done, failed = _collect(s3, resources.bucket, args.output, args.input)
    dlq = int(sqs.get_queue_attributes(QueueUrl=resources.dlq_url, AttributeNames=[
        "ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"])
    print(f"fleet of {args.workers} worker(s): done {done}, failed {failed}, in DLQ {dlq}, "
          f"{seconds:.1f} s; outputs and results.jsonl in {args.output}")
    print(f"gallery: {args.output / 'index.html'}")
    return 0 if (watch.returncode == 0 and failed == 0 and dlq == 0) else 1


def _collect(s3, bucket: str, output_dir: Path, input_dir: Path) -> tuple[int, int]:
    """Copy outputs (named after their inputs, as the local folder mode names them) and
    write results.jsonl from the records, and the gallery next to them."""
    output_dir.mkdir(parents=True, exist_ok=True)
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
