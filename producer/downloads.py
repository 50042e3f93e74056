"""Parallel downloads that skip files already there with the same bytes.

A local file is current when its size matches and, for a single-part ETag (the MD5 of
the bytes), its MD5 matches too. A multipart or SSE-KMS ETag is not an MD5 of the whole
file, so there the size alone decides. Files are written to ``<name>.part`` and renamed,
so an interrupted run never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger(__name__)

_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Download:
    bucket: str
    key: str
    dest: Path
    size: int | None = None  # from a listing; None: HEAD first
    etag: str | None = None


@dataclass
class DownloadReport:
    downloaded: int = 0
    unchanged: int = 0
    bytes: int = 0
    failed: list[str] = field(default_factory=list)  # "s3://bucket/key: why"

    def line(self) -> str:
        size = f"{self.bytes / 1e6:.1f} MB"
        return (f"downloaded {self.downloaded} ({size}), already there {self.unchanged}, "
                f"failed {len(self.failed)}")


def safe_name(name: str) -> str:
    """A file name from an S3 name: no separators, no '.'/'..', no NUL."""
    cleaned = re.sub(r"[/\\\x00]", "_", name)
    return "_" if cleaned in ("", ".", "..") else cleaned


def is_current(path: Path, size: int, etag: str) -> bool:
    try:
        if path.stat().st_size != size:
            return False
    except FileNotFoundError:
        return False
    match = _MD5_ETAG.match(etag)
    if match is None:
        return True  # multipart/SSE-KMS ETag: not an MD5 of the bytes; size matched
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == match.group(1)


def download_all(s3: Any, downloads: list[Download], *, concurrency: int = 8,
                 on_file: Callable[[int], None] = lambda n: None) -> DownloadReport:
    """Download in parallel; ``on_file(1)`` after each file, fetched or skipped."""
    report = DownloadReport()

    def one(item: Download) -> tuple[str, int]:
        try:
            size, etag = item.size, item.etag
            if size is None or etag is None:
                head = s3.head_object(Bucket=item.bucket, Key=item.key)
                size, etag = int(head["ContentLength"]), head["ETag"]
            if is_current(item.dest, size, etag):
                return "unchanged", 0
            item.dest.parent.mkdir(parents=True, exist_ok=True)
            part = item.dest.with_name(item.dest.name + ".part")
            body = s3.get_object(Bucket=item.bucket, Key=item.key)["Body"]
            with part.open("wb") as fh:
                shutil.copyfileobj(body, fh, _CHUNK)
            os.replace(part, item.dest)
            return "written", item.dest.stat().st_size
        except (ClientError, BotoCoreError, OSError) as exc:
            log.debug("download of s3://%s/%s failed", item.bucket, item.key, exc_info=True)
            return f"s3://{item.bucket}/{item.key}: {_reason(exc)}", 0
        finally:
            on_file(1)

    tally = each_file(one, downloads, concurrency=concurrency, thread_name="download")
    report.downloaded, report.unchanged, report.bytes, report.failed = tally
    return report


def each_file(one: Callable[[Any], tuple[str, int]], items: list[Any], *, concurrency: int,
              thread_name: str) -> tuple[int, int, int, list[str]]:
    """``one(item)`` for every item in a thread pool, tallied: it returns ("written",
    bytes), ("unchanged", 0) or (a failure line, 0). Returns (written, unchanged, bytes
    written, failure lines)."""
    written = unchanged = size_total = 0
    failed: list[str] = []
    with ThreadPoolExecutor(concurrency, thread_name_prefix=thread_name) as pool:
        for outcome, size in pool.map(one, items):
            if outcome == "written":
                written += 1
                size_total += size
            elif outcome == "unchanged":
                unchanged += 1
            else:
                failed.append(outcome)
    return written, unchanged, size_total, failed


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '?')}: {error.get('Message') or exc}"
    return str(exc) or type(exc).__name__
