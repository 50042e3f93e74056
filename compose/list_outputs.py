"""List what the local fleet wrote: each result record under the outputs prefix.

    docker compose run --rm --no-deps results                    # list, and copy to the host
    docker compose run --rm --entrypoint python producer /compose/list_outputs.py   # list

Options:
  --wait           first wait until every batch under the prefix has finished (its
                   manifest's total of done/failed markers, as `img2img-producer status`
                   counts them), at most FLEET_WAIT_SECONDS (900)
  --download DIR   copy the outputs and their result records into DIR; when run as root,
                   the files are given to DIR's owner

Environment: AWS_ENDPOINT_URL, AWS_REGION, FLEET_BUCKET (img2img-local),
FLEET_OUTPUT_PREFIX (outputs/), FLEET_DOWNLOAD_LABEL (how DIR is named in the last line,
e.g. the host folder it is mounted from). Exits 1 when nothing has been written yet or
the wait ran out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import boto3

# The batch layout written by the producer and the workers (contract/locations.py):
# <prefix>_batches/<batch_id>/manifest.json and <prefix>_batches/<batch_id>/<job_id>.<status>
BATCHES = "_batches/"
MANIFEST = "manifest.json"
POLL_SECONDS = 2.0


def list_keys(s3: object, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
        Bucket=bucket, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def batch_counts(s3: object, bucket: str, prefix: str) -> dict[str, tuple[int, int, int]]:
    """batch id -> (total, done, failed) for every batch with a manifest under prefix."""
    totals: dict[str, int] = {}
    finished: dict[str, list[int]] = {}
    for key in list_keys(s3, bucket, prefix + BATCHES):
        batch_id, _, name = key[len(prefix + BATCHES):].partition("/")
        if name == MANIFEST:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
            totals[batch_id] = int(json.loads(body)["total"])
        elif name.endswith((".done", ".failed")):  # <job id>[+<job id>...].<status>
            counts = finished.setdefault(batch_id, [0, 0])
            counts[0 if name.endswith(".done") else 1] += len(name.split("+"))
    return {b: (total, *finished.get(b, [0, 0])) for b, total in totals.items()}


def wait_for_batches(s3: object, bucket: str, prefix: str, timeout: float) -> bool:
    """Print each batch's progress as it changes; True once all of them have finished."""
    deadline = time.monotonic() + timeout
    last: dict[str, tuple[int, int, int]] | None = None
    while True:
        counts = batch_counts(s3, bucket, prefix)
        if counts != last:
            for batch_id, (total, done, failed) in sorted(counts.items()):
                print(f"batch {batch_id}: {done + failed}/{total} finished "
                      f"({done} done, {failed} failed)", flush=True)
            last = counts
        if counts and all(done + failed >= total for total, done, failed in counts.values()):
            return True
        if time.monotonic() >= deadline:
            print(f"gave up waiting after {timeout:.0f} s: is a job in the DLQ? "
                  "(docker compose run --rm producer status)", flush=True)
            return False
        time.sleep(POLL_SECONDS)


def download(s3: object, bucket: str, keys: list[str], prefix: str, target: Path) -> None:
    owner = target.stat()
    for key in keys:
        path = target / key[len(prefix):]
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(bucket, key, str(path))  # type: ignore[attr-defined]
        if os.geteuid() == 0:  # a container writing into a host folder: keep its owner
            for made in [path, *path.relative_to(target).parents]:
                os.chown(target / made, owner.st_uid, owner.st_gid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wait", action="store_true")
    parser.add_argument("--download", type=Path, metavar="DIR")
    args = parser.parse_args(argv)

    bucket = os.environ.get("FLEET_BUCKET", "img2img-local")
    prefix = os.environ.get("FLEET_OUTPUT_PREFIX", "outputs/")
    s3 = boto3.client("s3", region_name=os.environ.get("AWS_REGION", "us-east-1"))
    if args.wait and not wait_for_batches(
            s3, bucket, prefix, float(os.environ.get("FLEET_WAIT_SECONDS", "900"))):
        return 1

    keys = [k for k in list_keys(s3, bucket, prefix) if not k.startswith(prefix + BATCHES)]
    records = [k for k in keys if k.endswith(".json")]
    statuses = []
    for key in records:
        record = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        statuses.append(record.get("status", "?"))
        print(f"{statuses[-1]:8} s3://{bucket}/{key}")
    images = len(keys) - len(records)
    print(f"{len(records)} result records, {images} images under s3://{bucket}/{prefix}")
    if args.download and keys:
        download(s3, bucket, keys, prefix, args.download)
        label = os.environ.get("FLEET_DOWNLOAD_LABEL") or str(args.download)
        print(f"{statuses.count('done')} done, {statuses.count('failed')} failed: outputs and "
              f"result records are in {label}", flush=True)
    if args.wait:
        print("The fleet keeps running for more jobs (docker compose run --rm producer ...); "
              "Ctrl-C stops it, docker compose down -v removes it.", flush=True)
    return 0 if keys else 1


if __name__ == "__main__":
    sys.exit(main())
