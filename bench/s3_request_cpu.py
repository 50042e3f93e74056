"""CPU of one S3 object request, per client, on one thread: the worker's direct client
against botocore, on the same moto (keep-alive, as S3) in the same run.

    PYTHONPATH=. python -m bench.s3_request_cpu [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from itertools import count

from bench.devstats import thread_cpu_per_call

BUCKET = "request-cpu"
JSON = "application/json"


def cpu_ms(call: Callable[[], object], requests: int) -> float:
    """Thread CPU ms per call, after a warm-up."""
    return round(1000 * thread_cpu_per_call(call, requests, warm_up=min(20, requests)), 3)


def measure(endpoint: str, requests: int) -> dict[str, dict[str, float]]:
    from common.aws import make_session, s3_client
    from worker.fleet.object_clients import object_client

    session = make_session()
    s3 = s3_client(session, endpoint_url=endpoint, max_attempts=1)
    s3.create_bucket(Bucket=BUCKET)
    image = os.urandom(58 * 1024)  # a 512 px JPEG's size
    record = b"{}" * 500
    keys = count()
    results = {}
    for name in ("direct", "botocore"):
        results[name] = _one_client(object_client(name, s3, session), image, record, keys,
                                    requests)
    return results


def _one_client(objects, image: bytes, record: bytes, keys: count,
                requests: int) -> dict[str, float]:
    objects.put(BUCKET, "input.jpg", image, "image/jpeg")
    return {
        "conditional PUT 58 KiB": cpu_ms(lambda: objects.put(
            BUCKET, f"out/{next(keys)}.jpg", image, "image/jpeg", if_none_match=True),
            requests),
        "GET 58 KiB": cpu_ms(lambda: objects.get(BUCKET, "input.jpg"), requests),
        "PUT 1 KiB JSON": cpu_ms(lambda: objects.put(
            BUCKET, f"rec/{next(keys)}.json", record, JSON), requests),
    }


def main(argv: list[str] | None = None) -> dict:
    from bench.devstats import machine_info
    from bench.overlap_probes import moto_subprocess

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    with moto_subprocess("keepalive") as (endpoint, _):
        result = {"machine": machine_info(), "requests": args.requests,
                  "cpu_ms_per_request": measure(endpoint, args.requests)}
    print(json.dumps(result["cpu_ms_per_request"], indent=2))
    return result


if __name__ == "__main__":
    main()
