"""Batches for end-to-end runs: a fresh fleet, a folder of images enqueued by the real
producer, and the result records a run left behind."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from common.aws import s3_client, sqs_client
from local_fleet.embedded_aws import create_fleet_resources
from producer.cli import app
from tests.support.images import solid_png

runner = CliRunner()


FAST = ["-m", "tiny", "-p", "a test", "--steps", "4", "--strength", "0.5",
        "--max-side", "64"]


def new_fleet(endpoint: str, name: str):
    tag = f"{name}{uuid.uuid4().hex[:8]}"
    s3, sqs = s3_client(endpoint_url=endpoint), sqs_client(endpoint_url=endpoint)
    resources = create_fleet_resources(s3, sqs, endpoint_url=endpoint, bucket=f"bkt-{tag}",
                                       queue_name=f"q-{tag}", max_receive_count=2,
                                       visibility_timeout=30)
    return resources, s3, sqs


def enqueue_folder(resources, folder: Path, batch_id: str, *extra: str, env=None) -> None:
    result = runner.invoke(app, [
        "enqueue", str(folder), "--bucket", resources.bucket, "--upload-prefix",
        f"in/{batch_id}/", "--output", f"s3://{resources.bucket}/out/", "--batch-id",
        batch_id, *FAST, *extra], env={**resources.environment(), **(env or {})})
    assert result.exit_code == 0, result.output


def image_folder(folder: Path, count: int, corrupt: int = 0) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"img{i}.png").write_bytes(solid_png((48 + 8 * i, 40), color=i * 30))
    for i in range(corrupt):
        (folder / f"broken{i}.png").write_bytes(b"\x89PNG not really")
    return folder


def result_records(s3: Any, bucket: str) -> list[dict]:
    records = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".json") and "/_batches/" not in obj["Key"]:
                records.append(json.loads(s3.get_object(Bucket=bucket, Key=obj["Key"])[
                    "Body"].read()))
    return records
