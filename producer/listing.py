"""Finding the images under an S3 prefix (paginated, one LIST per page)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from contract.locations import BATCHES_FOLDER, S3Location, is_image_key

# ListObjectsV2 returns at most 1000 keys per call.
MAX_KEYS_PER_LIST = 1000


@dataclass(frozen=True)
class SourceObject:
    """One input image: where it is, its ETag, and its key relative to the source."""

    location: S3Location
    etag: str
    relative: str


@dataclass
class Listing:
    images: list[SourceObject]
    ignored: int  # objects that are not images or lie under the outputs


def iter_objects(s3: Any, bucket: str, prefix: str, page_size: int = MAX_KEYS_PER_LIST,
                 delimiter: str | None = None) -> Iterator[dict]:
    """Every object under ``prefix``, page by page (with ``delimiter="/"``: not those in
    sub-folders)."""
    paginator = s3.get_paginator("list_objects_v2")
    extra = {"Delimiter": delimiter} if delimiter else {}
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix,
                               PaginationConfig={"PageSize": page_size}, **extra)
    for page in pages:
        yield from page.get("Contents", [])


def is_excluded(key: str, exclude_prefixes: tuple[str, ...]) -> bool:
    """Keys under an output prefix or any ``_batches/`` folder are never inputs."""
    if key.startswith(f"{BATCHES_FOLDER}/") or f"/{BATCHES_FOLDER}/" in key:
        return True
    return any(p and key.startswith(p) for p in exclude_prefixes)


def list_images(s3: Any, source: S3Location, *, exclude_prefixes: tuple[str, ...] = (),
                page_size: int = MAX_KEYS_PER_LIST) -> Listing:
    """The image objects under ``source`` (a prefix), sorted by key."""
    images: list[SourceObject] = []
    ignored = 0
    for obj in iter_objects(s3, source.bucket, source.key, page_size):
        key = obj["Key"]
        if key.endswith("/"):  # a console "folder" placeholder
            continue
        if is_excluded(key, exclude_prefixes) or not is_image_key(key):
            ignored += 1
            continue
        images.append(SourceObject(
            location=S3Location(bucket=source.bucket, key=key),
            etag=obj["ETag"], relative=key[len(source.key):]))
    images.sort(key=lambda o: o.location.key)
    return Listing(images=images, ignored=ignored)


def head_etags(s3: Any, locations: list[S3Location], *,
               concurrency: int = 8) -> dict[S3Location, str | ClientError]:
    """The ETag of each object, or the ClientError HEAD gave (404 for a missing one)."""

    def one(location: S3Location) -> str | ClientError:
        try:
            return s3.head_object(Bucket=location.bucket, Key=location.key)["ETag"]
        except ClientError as exc:
            return exc

    unique = list(dict.fromkeys(locations))
    with ThreadPoolExecutor(concurrency, thread_name_prefix="head") as pool:
        return dict(zip(unique, pool.map(one, unique), strict=True))


def describe_head_error(location: S3Location, exc: ClientError) -> str:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in ("404", "NoSuchKey", "NotFound"):
        return f"no such object: {location.uri}"
    if code in ("403", "AccessDenied"):
        return f"access denied: {location.uri}"
    return f"cannot read {location.uri}: {code or exc}"
