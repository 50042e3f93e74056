"""A batch's running totals and its one ``batch.complete``, kept by the workers in S3.

Each job that ends counts once in one of COUNTER_SHARDS small counter objects (the one
its id hashes to), with a conditional write: a GET and a PUT per job, contended only by
the jobs of the same shard. When a shard reaches the number of jobs the manifest gives
it, the worker reads the other shards; when all are full it counts the batch's markers
once (a LIST, so a job counted twice after a crash cannot end a batch early) and claims
``complete.json`` with a conditional PUT. Exactly one worker wins that claim, whichever
ends the last job, and announces the batch, then marks the claim ``announced``.

The claim names the message of the job that won it, and that message is deleted only
after the announcement: a worker that dies in between leaves an unannounced claim, and the
message's redelivery (the job counts again, the batch is full again) takes the claim over
and announces. So a crash can repeat a ``batch.complete`` (subscribers deduplicate by
``batch_id``, as SNS delivers at least once anyway) but cannot lose it.
"""

from __future__ import annotations

import json
import logging
import posixpath
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from contract.batches import BatchCounts, BatchManifest, FinalStatus
from contract.locations import (
    COUNTER_SHARDS,
    S3Location,
    batch_complete_key,
    batch_counter_key,
    batch_manifest_key,
    batch_prefix,
    counter_shard,
    output_dir,
)
from worker.fleet.storage import S3Storage

log = logging.getLogger(__name__)

JSON = "application/json"
# Conditional-write attempts on one counter before the count is given up (logged).
COUNT_ATTEMPTS = 12
MANIFEST_CACHE = 256  # batches whose manifest a worker remembers


@dataclass(frozen=True)
class Completed:
    """This worker ended the batch's last job and won the right to announce it."""

    batch_id: str
    output_prefix: str  # s3://bucket/<output dir>
    total: int
    counts: BatchCounts
    claim: S3Location  # complete.json


class BatchProgress:
    def __init__(self, storage: S3Storage, worker_id: str,
                 sleep=time.sleep) -> None:
        self.storage = storage
        self.worker_id = worker_id
        self._sleep = sleep
        self._manifests: dict[tuple[str, str, str], BatchManifest | None] = {}
        self._lock = threading.Lock()

    def count(self, output: S3Location, batch_id: str | None, job_id: str,
              status: FinalStatus, gpu_seconds: float = 0.0, cost_usd: float | None = None,
              message_id: str = "") -> Completed | None:
        """Count one ended job; a ``Completed`` when it completed the batch for us
        (``message_id``: the delivery that ended it, named in the claim)."""
        if not batch_id:
            return None
        folder = output_dir(output.key)
        manifest = self._manifest(output.bucket, folder, batch_id)
        if manifest is None or manifest.shard_totals is None:
            return None  # an older producer's batch (or none): nothing to complete
        shard = counter_shard(job_id)
        counts = self._increment(S3Location(bucket=output.bucket,
                                            key=batch_counter_key(folder, batch_id, shard)),
                                 status, gpu_seconds, cost_usd)
        if counts is None or counts.ended < manifest.shard_totals[shard]:
            return None
        total = self._all_shards(output.bucket, folder, batch_id, manifest)
        if total is None or self._markers(output.bucket, folder, batch_id) < manifest.total:
            return None
        claim = S3Location(bucket=output.bucket, key=batch_complete_key(folder, batch_id))
        if not self._claim(claim, batch_id, message_id):
            return None
        return Completed(batch_id=batch_id, output_prefix=f"s3://{output.bucket}/{folder}",
                         total=manifest.total, counts=total, claim=claim)

    def announced(self, completed: Completed) -> None:
        """Mark the batch announced: its claim is no longer taken over."""
        body = json.dumps({"announced_by": self.worker_id, "announced": True, "at": _now(),
                           "total": completed.total,
                           **completed.counts.model_dump()}).encode()
        self.storage.put(completed.claim, body, JSON)

    def _manifest(self, bucket: str, folder: str, batch_id: str) -> BatchManifest | None:
        key = (bucket, folder, batch_id)
        with self._lock:
            if key in self._manifests:
                return self._manifests[key]
        data, _ = self.storage.read_json(S3Location(
            bucket=bucket, key=batch_manifest_key(folder, batch_id)))
        try:
            manifest = BatchManifest.model_validate(data) if data else None
        except ValueError:
            manifest = None
        with self._lock:
            if len(self._manifests) >= MANIFEST_CACHE:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[key] = manifest
        return manifest

    def _increment(self, location: S3Location, status: FinalStatus, gpu_seconds: float,
                   cost_usd: float | None) -> BatchCounts | None:
        for attempt in range(COUNT_ATTEMPTS):
            data, etag = self.storage.read_json(location)
            counts = BatchCounts.model_validate(data or {}).add(status, gpu_seconds, cost_usd)
            body = counts.model_dump_json().encode()
            written = (self.storage.put_if_match(location, body, JSON, etag) if etag
                       else self.storage.put_if_absent(location, body, JSON))
            if written:
                return counts
            self._sleep(random.uniform(0, 0.05 * 2 ** min(attempt, 5)))  # contended
        log.error("could not count a job in %s after %d attempts; its batch will not be "
                  "announced as complete", location.uri, COUNT_ATTEMPTS)
        return None

    def _all_shards(self, bucket: str, folder: str, batch_id: str,
                    manifest: BatchManifest) -> BatchCounts | None:
        """The summed counts when every shard has all its jobs, else None (stops at the
        first shard that does not)."""
        assert manifest.shard_totals is not None
        total = BatchCounts()
        for shard in range(COUNTER_SHARDS):
            if not manifest.shard_totals[shard]:
                continue
            data, _ = self.storage.read_json(S3Location(
                bucket=bucket, key=batch_counter_key(folder, batch_id, shard)))
            counts = BatchCounts.model_validate(data or {})
            if counts.ended < manifest.shard_totals[shard]:
                return None
            total = total + counts
        return total

    def _markers(self, bucket: str, folder: str, batch_id: str) -> int:
        """Distinct jobs with a final marker (one LIST page per 1000 jobs)."""
        jobs: set[str] = set()
        paginator = self.storage.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=batch_prefix(folder, batch_id),
                                       Delimiter="/"):
            for obj in page.get("Contents", []):
                job_id, _, status = posixpath.basename(obj["Key"]).rpartition(".")
                if status in ("done", "failed", "cancelled", "expired"):
                    jobs.add(job_id)
        return len(jobs)

    def _claim(self, location: S3Location, batch_id: str, message_id: str) -> bool:
        """Win the batch's announcement: the first claim, or an unannounced one that this
        very message made in an earlier delivery (whose worker died before announcing)."""
        body = json.dumps({"announced_by": self.worker_id, "announced": False,
                           "message_id": message_id, "at": _now()}).encode()
        if self.storage.put_if_absent(location, body, JSON):
            return True
        data, etag = self.storage.read_json(location)
        if (not message_id or not data or data.get("announced")
                or data.get("message_id") != message_id or not etag):
            return False
        log.warning("batch %s: announcing it again; the earlier delivery of its last job "
                    "(worker %s) claimed it and ended before announcing", batch_id,
                    data.get("announced_by"), extra={"batch_id": batch_id})
        return self.storage.put_if_match(location, body, JSON, etag)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
