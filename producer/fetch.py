"""``img2img-producer fetch``: a batch's outputs and result records into a local folder.

Files keep their S3 names (``<stem>.<job_id[:12]>.<ext>`` and ``<that>.json``), so a
local file names its job as the S3 object does. A second run downloads only what changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.locations import S3Location
from producer.batch_objects import FinishedJob, finished_jobs
from producer.downloads import Download, DownloadReport, download_all, safe_name
from producer.manifest import read_manifest
from producer.status import DONE

ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class FetchSummary:
    batch_id: str
    dest: Path
    total: int | None  # the manifest's, None without one
    done: int = 0
    failed: int = 0
    no_record: list[str] = field(default_factory=list)  # finished job ids without a record
    report: DownloadReport = field(default_factory=DownloadReport)

    def to_dict(self) -> dict[str, Any]:
        """``fetch --json``."""
        return {"batch_id": self.batch_id, "dest": str(self.dest), "total": self.total,
                "done": self.done, "failed": self.failed,
                "downloaded": self.report.downloaded, "unchanged": self.report.unchanged,
                "bytes": self.report.bytes, "not_downloaded": self.report.failed,
                "no_record": self.no_record}

    def line(self) -> str:
        total = "?" if self.total is None else str(self.total)
        return (f"batch {self.batch_id}: {self.done + self.failed} of {total} jobs finished "
                f"(done {self.done}, failed {self.failed}); {self.report.line()}; "
                f"in {self.dest}")


def downloads_for(jobs: list[FinishedJob], bucket: str, dest: Path) -> list[Download]:
    """Each finished job's record, and its output when it is done."""
    found = []
    for job in jobs:
        for obj in (job.record, job.output):
            if obj is not None:
                found.append(Download(bucket, obj.key, dest / safe_name(obj.name),
                                      obj.size, obj.etag))
    return found


def fetch_batch(s3: Any, output: S3Location, batch_id: str, dest: Path, *,
                concurrency: int, progress: ProgressFactory) -> FetchSummary:
    jobs = finished_jobs(s3, output, batch_id)
    manifest = read_manifest(s3, output, batch_id)
    summary = FetchSummary(batch_id=batch_id, dest=dest,
                           total=manifest.total if manifest else None)
    summary.done = sum(1 for j in jobs if j.status == DONE)
    summary.failed = len(jobs) - summary.done
    summary.no_record = [j.job_id for j in jobs if j.record is None]
    downloads = downloads_for(jobs, output.bucket, dest)
    dest.mkdir(parents=True, exist_ok=True)
    summary.report = download_all(s3, downloads, concurrency=concurrency,
                                  on_file=progress("fetch", len(downloads)))
    return summary
