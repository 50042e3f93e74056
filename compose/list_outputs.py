"""List what the local fleet wrote: each result record under the outputs prefix.

    docker compose run --rm --entrypoint python producer /compose/list_outputs.py

Environment: AWS_ENDPOINT_URL, AWS_REGION, FLEET_BUCKET (img2img-local),
FLEET_OUTPUT_PREFIX (outputs/). Exits 1 when nothing has been written yet.
"""

from __future__ import annotations

import json
import os
import sys

import boto3


def main() -> int:
    bucket = os.environ.get("FLEET_BUCKET", "img2img-local")
    prefix = os.environ.get("FLEET_OUTPUT_PREFIX", "outputs/")
    s3 = boto3.client("s3", region_name=os.environ.get("AWS_REGION", "us-east-1"))
    keys = [obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", [])]
    records = [k for k in keys if k.endswith(".json")]
    for key in records:
        record = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        print(f"{record.get('status', '?'):8} s3://{bucket}/{key}")
    images = len(keys) - len(records)
    print(f"{len(records)} result records, {images} images under s3://{bucket}/{prefix}")
    return 0 if keys else 1


if __name__ == "__main__":
    sys.exit(main())
