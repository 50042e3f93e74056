"""A batch's running totals and its one ``batch.complete``, kept by the workers in S3.

Ended jobs are counted in small counter objects (a batch of up to 2000 jobs has one; a
larger one up to COUNTER_SHARDS, each job counting in the one its id hashes to), with
conditional writes. A worker counts together the jobs it ended close together
(``count_all``): one write per counter they touch, and no read before it when this
worker wrote that counter last (it remembers the version it wrote; a write over a
version someone else replaced fails, and the counter is read again). When a counter
reaches the number of jobs the manifest gives it, the worker reads the other counters;
when all are full it counts the batch's markers once (a LIST, so a job counted twice
after a crash cannot end a batch early) and claims ``complete.json`` with a conditional
PUT. Exactly one worker wins that claim, whichever ends the last job, and announces the
batch, then marks the claim ``announced``.

The claim names the message of a job that won it, and that message is deleted only
after the announcement: a worker that dies in between leaves an unannounced claim, and the
message's redelivery (the job counts again, the batch is full again) takes the claim over
and announces. So a crash can repeat a ``batch.complete`` (subscribers deduplicate by
``batch_id``, as SNS delivers at least once anyway) but cannot lose it.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from contract.batches import BatchCounts, BatchManifest, FinalStatus
from contract.locations import (
    S3Location,
    batch_complete_key,
    batch_counter_key,
    batch_manifest_key,
    batch_prefix,
    counter_shard,
    marker_jobs,
    output_dir,
)
from worker.fleet.storage import S3Storage

log = logging.getLogger(__name__)

JSON = "application/json"
# Conditional-write attempts on one counter before the count is given up (logged).
COUNT_ATTEMPTS = 12
MANIFEST_CACHE = 256  # batches whose manifest a worker remembers
COUNTER_CACHE = 1024  # counters whose last written version a worker remembers


@dataclass(frozen=True)
class Completed:
    """This worker ended the batch's last job and won the right to announce it."""

    batch_id: str
    output_prefix: str  # s3://bucket/<output dir>
    total: int
    counts: BatchCounts
    claim: S3Location  # complete.json
    message_id: str = ""  # the message named in the claim: settled after the announcement


@dataclass(frozen=True)
class Ended:
    """One ended job, as its batch counts it."""

    output: S3Location
    batch_id: str
    job_id: str
    status: FinalStatus
    gpu_seconds: float = 0.0
    cost_usd: float | None = None  # None: the job was not priced
    message_id: str = ""  # the delivery that ended it


class BatchProgress:
    def __init__(self, storage: S3Storage, worker_id: str,
                 sleep=time.sleep) -> None:
        self.storage = storage
        self.worker_id = worker_id
        self._sleep = sleep
        self._manifests: dict[tuple[str, str, str], BatchManifest | None] = {}
        self._counters: dict[str, tuple[BatchCounts, str]] = {}  # uri -> what we wrote
        self._lock = threading.Lock()

    def count(self, output: S3Location, batch_id: str | None, job_id: str,
              status: FinalStatus, gpu_seconds: float = 0.0, cost_usd: float | None = None,
              message_id: str = "") -> Completed | None:
        """Count one ended job; a ``Completed`` when it completed the batch for us
        (``message_id``: the delivery that ended it, named in the claim)."""
        if not batch_id:
            return None
        completed = self.count_all([Ended(output, batch_id, job_id, status, gpu_seconds,
                                          cost_usd, message_id)])
        return completed[0] if completed else None

    def count_all(self, ended: list[Ended]) -> list[Completed]:
        """Count ended jobs, each batch's together (one write per counter touched); the
        batches they completed for us. A batch whose counter cannot be read or written
        is logged and left uncounted (the jobs are done; their markers still say so).
        """
        batches: dict[tuple[str, str, str], list[Ended]] = {}
        for end in ended:
            if end.batch_id:
                batches.setdefault((end.output.bucket, output_dir(end.output.key),
                                    end.batch_id), []).append(end)
        completed = []
        for (bucket, folder, batch_id), ends in batches.items():
            try:
                done = self._count_batch(bucket, folder, batch_id, ends)
            except Exception as exc:  # noqa: BLE001 - the jobs are done; counts are not vital
                log.warning("batch %s: could not count %d job(s): %r", batch_id, len(ends),
                            exc, extra={"batch_id": batch_id})
                continue
            if done is not None:
                completed.append(done)
        return completed

    def _count_batch(self, bucket: str, folder: str, batch_id: str,
                     ends: list[Ended]) -> Completed | None:
        manifest = self._manifest(bucket, folder, batch_id)
        if manifest is None or not manifest.shard_totals:
            return None  # an older producer's batch (or none): nothing to complete
        shards = len(manifest.shard_totals)
        by_shard: dict[int, list[Ended]] = {}
        for end in ends:
            by_shard.setdefault(counter_shard(end.job_id, shards), []).append(end)
        full = False
        for shard, items in sorted(by_shard.items()):
            counts = self._increment(S3Location(
                bucket=bucket, key=batch_counter_key(folder, batch_id, shard)), items)
            full = full or (counts is not None
                            and counts.ended >= manifest.shard_totals[shard])
        if not full:
            return None
        total = self._all_shards(bucket, folder, batch_id, manifest)
        if total is None or self._markers(bucket, folder, batch_id) < manifest.total:
            return None
        claim = S3Location(bucket=bucket, key=batch_complete_key(folder, batch_id))
        message_id = ends[-1].message_id
        if not self._claim(claim, batch_id, message_id):
            return None
        return Completed(batch_id=batch_id, output_prefix=f"s3://{bucket}/{folder}",
                         total=manifest.total, counts=total, claim=claim,
                         message_id=message_id)

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

    def _increment(self, location: S3Location, items: list[Ended]) -> BatchCounts | None:
        """Add ``items`` to one counter: a conditional write over the version this
        worker last wrote (no read), else over the one it reads."""
        for attempt in range(COUNT_ATTEMPTS):
            with self._lock:
                known = self._counters.pop(location.uri, None)
            if known is None:
                data, etag = self.storage.read_json(location)
                known = (BatchCounts.model_validate(data or {}), etag or "")
            counts = known[0]
            for item in items:
                counts = counts.add(item.status, item.gpu_seconds, item.cost_usd)
            written = self.storage.replace(location, counts.model_dump_json().encode(), JSON,
                                           known[1] or None)
            if written is not None:
                if written:
                    with self._lock:
                        if len(self._counters) >= COUNTER_CACHE:
                            self._counters.pop(next(iter(self._counters)))
                        self._counters[location.uri] = (counts, written)
                return counts
            if attempt:  # the first miss was a stale memory; contended after that
                self._sleep(random.uniform(0, 0.05 * 2 ** min(attempt, 5)))
        log.error("could not count %d job(s) in %s after %d attempts; its batch will not "
                  "be announced as complete", len(items), location.uri, COUNT_ATTEMPTS)
        return None

    def _all_shards(self, bucket: str, folder: str, batch_id: str,
                    manifest: BatchManifest) -> BatchCounts | None:
        """The summed counts when every shard has all its jobs, else None (stops at the
        first shard that does not)."""
        assert manifest.shard_totals is not None
        total = BatchCounts()
        for shard, expected in enumerate(manifest.shard_totals):
            if not expected:
                continue
            location = S3Location(bucket=bucket, key=batch_counter_key(folder, batch_id,
                                                                         shard))
            with self._lock:
                known = self._counters.get(location.uri)
            if known is not None and known[0].ended >= expected:
                counts = known[0]  # what this worker wrote there: it only grows
            else:
                data, _ = self.storage.read_json(location)
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
                job_ids, status = marker_jobs(obj["Key"])
                if status in ("done", "failed", "cancelled", "expired"):
                    jobs.update(job_ids)
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
