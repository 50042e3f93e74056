"""The batch manifest: what ``status`` needs to know about a batch (its total above all)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from contract.locations import S3Location, batch_manifest_key


class BatchManifest(BaseModel):
    """Written by ``enqueue`` at ``<output dir>/_batches/<batch_id>/manifest.json``."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    total: int  # jobs on the queue for this batch
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    queue_url: str
    source: str
    output: str  # the output prefix, s3://bucket/prefix/
    not_enqueued: int = 0  # jobs whose send failed (not counted in total)


def manifest_location(output: S3Location, batch_id: str) -> S3Location:
    return S3Location(bucket=output.bucket, key=batch_manifest_key(output.key, batch_id))


def write_manifest(s3: Any, output: S3Location, manifest: BatchManifest) -> S3Location:
    where = manifest_location(output, manifest.batch_id)
    s3.put_object(Bucket=where.bucket, Key=where.key, Body=manifest.model_dump_json(indent=2),
                  ContentType="application/json")
    return where


def read_manifest(s3: Any, output: S3Location, batch_id: str) -> BatchManifest | None:
    """The manifest, or None when there is none (an unknown batch id or output prefix)."""
    where = manifest_location(output, batch_id)
    try:
        body = s3.get_object(Bucket=where.bucket, Key=where.key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return BatchManifest.model_validate_json(body)
