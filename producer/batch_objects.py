"""A batch's objects in S3: for each finished job, its result record and its output.

The batch's markers (``<output>_batches/<batch_id>/<job_id>[+<job_id>...].done|failed``)
say which jobs finished and how. Outputs are ``<output><stem>.<job_id[:12]>.<ext>`` with the record
next to them at ``<output key>.json``, so one delimited listing of the output folder finds
them all by name, without reading a record.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from contract.errors import InvalidJob
from contract.locations import RESULT_SUFFIX, S3Location, batch_prefix, marker_jobs
from producer.listing import iter_objects
from producer.manifest import read_manifest
from producer.status import DONE, FAILED


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    etag: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)


@dataclass(frozen=True)
class FinishedJob:
    job_id: str
    status: str  # done or failed (its marker)
    record: RemoteObject | None  # None: the marker is there but the record is not
    output: RemoteObject | None  # None for a failed job


def finished_jobs(s3: Any, output: S3Location, batch_id: str) -> list[FinishedJob]:
    """The batch's finished jobs, sorted by record key; InvalidJob for an unknown batch."""
    statuses: dict[str, str] = {}
    for obj in iter_objects(s3, output.bucket, batch_prefix(output.key, batch_id)):
        job_ids, status = marker_jobs(obj["Key"])
        if status in (DONE, FAILED):
            for job_id in job_ids:
                if statuses.get(job_id) != DONE:
                    statuses[job_id] = status
    if not statuses and read_manifest(s3, output, batch_id) is None:
        raise InvalidJob(f"no batch {batch_id} under {output.uri}: no manifest and no "
                         "finished job; check --batch-id and --output")
    by_prefix = {job_id[:12]: job_id for job_id in statuses}
    objects = {o.key: o for o in _folder_objects(s3, output)}
    jobs: dict[str, FinishedJob] = {}
    for key, obj in objects.items():
        if not key.endswith(RESULT_SUFFIX):
            continue
        parts = key[: -len(RESULT_SUFFIX)].rsplit(".", 2)
        job_id = by_prefix.get(parts[1]) if len(parts) == 3 else None
        if job_id is None:
            continue
        status = statuses[job_id]
        jobs[job_id] = FinishedJob(job_id, status, obj, objects.get(
            key[: -len(RESULT_SUFFIX)]) if status == DONE else None)
    for job_id, status in statuses.items():
        jobs.setdefault(job_id, FinishedJob(job_id, status, None, None))
    return sorted(jobs.values(), key=lambda j: (j.record.key if j.record else "", j.job_id))


def _folder_objects(s3: Any, output: S3Location) -> list[RemoteObject]:
    """The objects directly in the output folder (not in _batches/ or sub-folders)."""
    paginator = s3.get_paginator("list_objects_v2")
    found = []
    for page in paginator.paginate(Bucket=output.bucket, Prefix=output.key, Delimiter="/"):
        found.extend(RemoteObject(o["Key"], int(o["Size"]), o["ETag"])
                     for o in page.get("Contents", []))
    return found
