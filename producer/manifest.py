"""Writing and reading the batch manifest (contract.batches.BatchManifest)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from contract.batches import BatchManifest
from contract.locations import S3Location, batch_manifest_key

__all__ = ["BatchManifest", "manifest_location", "read_manifest", "write_manifest"]


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
