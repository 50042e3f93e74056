"""The batches under an output prefix, newest first, with their progress.

``enqueue`` writes each batch's manifest at ``<output prefix>_batches/<id>/manifest.json``;
one delimited LIST of ``_batches/`` names every batch without reading any marker.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from contract.locations import BATCHES_FOLDER, S3Location
from producer.manifest import read_manifest
from producer.status import BatchProgress, batch_progress

_OLDEST = datetime.min.replace(tzinfo=timezone.utc)


def batch_ids(s3: Any, output: S3Location) -> list[str]:
    """Every batch folder under ``<output>_batches/`` (one LIST per 1000 batches)."""
    root = f"{output.key}{BATCHES_FOLDER}/"
    paginator = s3.get_paginator("list_objects_v2")
    ids: list[str] = []
    for page in paginator.paginate(Bucket=output.bucket, Prefix=root, Delimiter="/"):
        ids.extend(p["Prefix"][len(root):].rstrip("/") for p in page.get("CommonPrefixes", []))
    return ids


def recent_batches(s3: Any, output: S3Location, *, limit: int,
                   concurrency: int = 8) -> list[BatchProgress]:
    """The ``limit`` most recently created batches, newest first, each with its counts.

    Batches without a manifest (enqueued by another producer) have no creation time and
    come last.
    """
    ids = batch_ids(s3, output)
    with ThreadPoolExecutor(concurrency, thread_name_prefix="batches") as pool:
        manifests = list(pool.map(lambda batch_id: read_manifest(s3, output, batch_id), ids))
        ranked = sorted(zip(ids, manifests, strict=True), reverse=True,
                        key=lambda pair: (pair[1].created_at if pair[1] else _OLDEST, pair[0]))
        newest = [batch_id for batch_id, _ in ranked[:limit]]
        return list(pool.map(lambda batch_id: batch_progress(s3, output, batch_id), newest))
