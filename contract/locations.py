"""S3 URIs and the output key layout.

The output key of a job is derived from its job_id, so a redelivered or re-enqueued job
writes to the same key and the conditional PUT can tell it is already done.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contract.errors import InvalidJob

S3_SCHEME = "s3://"
RESULT_SUFFIX = ".json"
# Extensions the folder scan and the S3 prefix listing treat as images (lower case).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Bucket naming rules: 3-63 chars, lowercase letters, digits, dots and hyphens.
_BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"
BUCKET_RULE = ("a bucket name is 3 to 63 lowercase letters, digits, dots and hyphens, "
               "starting and ending with a letter or digit")
# S3 object keys: at most 1024 bytes of UTF-8.
MAX_KEY_BYTES = 1024


class S3Location(BaseModel):
    """One object (or prefix, when key ends with '/') in S3."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: Annotated[str, Field(pattern=_BUCKET_PATTERN)]
    key: Annotated[str, Field(min_length=1, max_length=MAX_KEY_BYTES)]

    @field_validator("key")
    @classmethod
    def _key_fits_s3(cls, value: str) -> str:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_KEY_BYTES:
            raise ValueError(f"S3 keys are at most {MAX_KEY_BYTES} bytes of UTF-8; this one "
                             f"is {size}")
        return value

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    def __str__(self) -> str:
        return self.uri


def parse_s3_uri(uri: str, *, prefix: bool = False) -> S3Location:
    """Parse ``s3://bucket/key``; with ``prefix`` the key may be empty and ends with '/'."""
    if not uri.startswith(S3_SCHEME):
        raise InvalidJob(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if prefix:
        key = key if (not key or key.endswith("/")) else key + "/"
        # A prefix may be the bucket root (empty key), which S3Location does not allow.
        _validate(bucket, key or "-", uri)
        return S3Location.model_construct(bucket=bucket, key=key)
    if not bucket or not key:
        raise InvalidJob(f"S3 URI needs a bucket and a key: {uri!r}")
    return _validate(bucket, key, uri)


def _validate(bucket: str, key: str, uri: str) -> S3Location:
    try:
        return S3Location(bucket=bucket, key=key)
    except ValidationError as exc:
        problems = "; ".join(
            BUCKET_RULE if e["type"] == "string_pattern_mismatch" and e["loc"] == ("bucket",)
            else f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidJob(f"bad S3 URI {uri!r}: {problems}") from None


def is_image_key(key: str) -> bool:
    """True when a key or file name has an image extension (case-insensitive)."""
    return posixpath.splitext(key)[1].lower() in IMAGE_EXTENSIONS


def is_within(location: S3Location, allowed_prefixes: list[str]) -> bool:
    """True when ``location`` lies under one of ``allowed_prefixes`` (S3 URIs).

    Keys with '..' segments never match: S3 does not normalise them, but a human
    reading the prefix would assume it does.
    """
    if ".." in location.key.split("/"):
        return False
    uri = location.uri
    return any(uri.startswith(p if p.endswith("/") else p + "/") or uri == p
               for p in allowed_prefixes)


def output_key(output_prefix: str, input_key: str, job_id: str, extension: str) -> str:
    """``<prefix><input stem>.<job_id[:12]>.<ext>``: readable and unique per job."""
    stem = posixpath.splitext(posixpath.basename(input_key))[0] or "image"
    prefix = output_prefix if (not output_prefix or output_prefix.endswith("/")) else (
        output_prefix + "/")
    return f"{prefix}{stem}.{job_id[:12]}.{extension}"


def output_named_for(key: str, job_id: str) -> bool:
    """True when ``key``'s file name carries the job id as ``output_key`` puts it there."""
    name = posixpath.basename(key)
    return f".{job_id[:12]}." in f".{name}"


def result_key(output_key_: str) -> str:
    """Where a job's result record lives: next to the output, done or failed."""
    return output_key_ + RESULT_SUFFIX


# Per-batch status markers: empty objects under the output folder whose names say which
# jobs finished and how, so ``img2img-producer status`` counts a batch with one LIST
# instead of reading every result record. Layout:
# <output dir>/_batches/<batch_id>/<job_id>[+<job_id>...].<status>: a worker marks the
# jobs of one batch that it counts together (same status) with one object.
BATCHES_FOLDER = "_batches"
MANIFEST_NAME = "manifest.json"
# The batch's jobs as enqueued, one JSON message per line: what each job asked for
# (strength, steps, ...), which result records do not repeat.
JOBS_NAME = "jobs.jsonl"


def output_dir(output_key_: str) -> str:
    """The folder of an output key, with a trailing '/' (or '' at the bucket root)."""
    head = posixpath.dirname(output_key_)
    return head + "/" if head else ""


def batch_prefix(output_dir_: str, batch_id: str) -> str:
    return f"{output_dir_}{BATCHES_FOLDER}/{batch_id}/"


MARKER_JOIN = "+"  # never in a job id (contract.job: [A-Za-z0-9_-])
_MARKER_NAME_BYTES = 800  # what a marker's name may take of S3's 1024-byte key


def batch_marker_key(output_key_: str, batch_id: str, job_id: str, status: str) -> str:
    return f"{batch_prefix(output_dir(output_key_), batch_id)}{job_id}.{status}"


def batch_marker_keys(output_key_: str, batch_id: str, job_ids: list[str],
                      status: str) -> list[str]:
    """The markers of several jobs with one status: as few objects as the key limit
    allows (about 24 jobs each)."""
    keys, chunk = [], []
    for job_id in job_ids:
        if chunk and len(MARKER_JOIN.join([*chunk, job_id])) > _MARKER_NAME_BYTES:
            keys.append(batch_marker_key(output_key_, batch_id, MARKER_JOIN.join(chunk),
                                         status))
            chunk = []
        chunk.append(job_id)
    if chunk:
        keys.append(batch_marker_key(output_key_, batch_id, MARKER_JOIN.join(chunk), status))
    return keys


def marker_jobs(name: str) -> tuple[list[str], str]:
    """A marker's job ids and status, from its name (``a+b.done`` -> ``[a, b]``,
    ``done``); other names of the batch folder give a status that is not one."""
    stem, _, status = posixpath.basename(name).rpartition(".")
    return [job_id for job_id in stem.split(MARKER_JOIN) if job_id], status


def batch_manifest_key(output_dir_: str, batch_id: str) -> str:
    return batch_prefix(output_dir_, batch_id) + MANIFEST_NAME


# A batch's running totals live in COUNTER_SHARDS small objects, a job counting in the
# one its id hashes to, so the workers ending jobs of one batch rarely contend for the
# same conditional write; the manifest says how many jobs each shard expects.
COUNTER_SHARDS = 16
CANCEL_NAME = "cancel.json"
COMPLETE_NAME = "complete.json"


# A small batch keeps one counter: its jobs are counted together, one write for many.
JOBS_PER_SHARD = 2000


def counter_shards_for(total: int) -> int:
    """How many counter shards a batch of ``total`` jobs gets (1 to COUNTER_SHARDS)."""
    return max(1, min(COUNTER_SHARDS, -(-total // JOBS_PER_SHARD)))


def counter_shard(job_id: str, shards: int = COUNTER_SHARDS) -> int:
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16) % shards


def batch_counter_key(output_dir_: str, batch_id: str, shard: int) -> str:
    return f"{batch_prefix(output_dir_, batch_id)}counts/{shard:02d}.json"


def batch_cancel_key(output_dir_: str, batch_id: str) -> str:
    return batch_prefix(output_dir_, batch_id) + CANCEL_NAME


def batch_complete_key(output_dir_: str, batch_id: str) -> str:
    return batch_prefix(output_dir_, batch_id) + COMPLETE_NAME


def batch_jobs_key(output_dir_: str, batch_id: str) -> str:
    return batch_prefix(output_dir_, batch_id) + JOBS_NAME
