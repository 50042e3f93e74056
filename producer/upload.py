"""Uploading a local folder to S3, skipping objects that already hold the same bytes."""

from __future__ import annotations

import hashlib
import logging
import mimetypes
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from common.folders import LocalImage, scan_images
from contract.locations import MAX_KEY_BYTES, S3Location
from producer.listing import iter_objects

log = logging.getLogger(__name__)

# Files at or above this size go up in parts of this size; the local ETag computation
# below must use the same numbers to predict the ETag S3 gives the object.
PART_SIZE = 8 * 1024 * 1024
TRANSFER = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                          use_threads=False)  # files are uploaded in parallel instead
MD5_METADATA = "md5"  # x-amz-meta-md5: survives multipart uploads and SSE-KMS ETags


def key_of(image: LocalImage, prefix: str) -> str:
    """The key a local image is uploaded to: its path under the folder, under ``prefix``."""
    return prefix + image.relative


@dataclass(frozen=True)
class Digest:
    md5: str  # hex digest of the whole file
    etag: str  # the ETag S3 gives it when uploaded with TRANSFER, quoted


@dataclass
class UploadResult:
    files: list[LocalImage]  # the files now in S3
    ignored: int  # files that are not images
    skipped: list[str] = field(default_factory=list)  # files that cannot be uploaded: why
    uploaded: int = 0
    unchanged: int = 0
    etags: dict[str, str] = field(default_factory=dict)  # key -> ETag


def uploadable(files: list[LocalImage], prefix: str) -> tuple[list[LocalImage], list[str]]:
    """The files whose keys fit S3, and why each of the others does not."""
    fits = [f for f in files if len(key_of(f, prefix).encode()) <= MAX_KEY_BYTES]
    return fits, [f"{f.path}: its key would be over S3's {MAX_KEY_BYTES} bytes"
                  for f in files if f not in fits]


def file_digest(path: Path, part_size: int = PART_SIZE) -> Digest:
    """MD5 and the predicted S3 ETag (single part, or md5-of-part-md5s-N for multipart)."""
    whole = hashlib.md5(usedforsecurity=False)
    parts: list[bytes] = []
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(part_size):
            whole.update(chunk)
            parts.append(hashlib.md5(chunk, usedforsecurity=False).digest())
            size += len(chunk)
    if size < part_size:
        return Digest(md5=whole.hexdigest(), etag=f'"{whole.hexdigest()}"')
    combined = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest()
    return Digest(md5=whole.hexdigest(), etag=f'"{combined}-{len(parts)}"')


def local_etags(files: list[LocalImage], prefix: str) -> dict[str, str]:
    """The ETags the files would have once uploaded (for a dry run, which uploads nothing)."""
    return {key_of(f, prefix): file_digest(f.path).etag for f in files}


def _is_current(s3: Any, dest: S3Location, key: str, digest: Digest,
                existing_etag: str | None) -> bool:
    if existing_etag is None:
        return False
    if existing_etag == digest.etag:
        return True
    # A different ETag can still be the same bytes (other part size, SSE-KMS): ask the md5.
    head = s3.head_object(Bucket=dest.bucket, Key=key)
    return head.get("Metadata", {}).get(MD5_METADATA) == digest.md5


def upload_folder(s3: Any, root: Path, dest: S3Location, *, concurrency: int = 8,
                  on_file: Callable[[], None] = lambda: None) -> UploadResult:
    """Upload the images under ``root`` to the prefix ``dest``; return what is there now."""
    scanned, others = scan_images(root)
    ignored = len(others)
    files, skipped = uploadable(scanned, dest.key)
    result = UploadResult(files=files, ignored=ignored, skipped=skipped)
    existing = {o["Key"]: o["ETag"] for o in iter_objects(s3, dest.bucket, dest.key)}

    def one(local: LocalImage) -> tuple[str, bool]:
        key = key_of(local, dest.key)
        digest = file_digest(local.path)
        if _is_current(s3, dest, key, digest, existing.get(key)):
            on_file()
            return key, False
        content_type = mimetypes.guess_type(local.path.name)[0] or "application/octet-stream"
        s3.upload_file(str(local.path), dest.bucket, key, Config=TRANSFER, ExtraArgs={
            "Metadata": {MD5_METADATA: digest.md5}, "ContentType": content_type})
        log.debug("uploaded %s to s3://%s/%s", local.path, dest.bucket, key)
        on_file()
        return key, True

    with ThreadPoolExecutor(concurrency, thread_name_prefix="upload") as pool:
        for _key, uploaded in pool.map(one, files):
            if uploaded:
                result.uploaded += 1
            else:
                result.unchanged += 1
    wanted = {key_of(f, dest.key) for f in files}
    result.etags = {o["Key"]: o["ETag"] for o in iter_objects(s3, dest.bucket, dest.key)
                    if o["Key"] in wanted}
    return result
