"""``img2img-producer gallery``: a batch's gallery in a local folder (with thumbnails of
the inputs and outputs, or full-size copies) or in S3 (pages linking images by presigned
URL, for a private bucket). The pages are ``common.gallery``'s; this module finds and
places the images."""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError

from common.gallery import DEFAULT_PAGE_SIZE, INDEX, render_gallery, write_gallery
from contract.errors import InvalidJob
from contract.locations import S3_SCHEME, S3Location, parse_s3_uri
from contract.result import ResultRecord
from producer.batch_jobs import job_parameters
from producer.batch_objects import FinishedJob, finished_jobs
from producer.downloads import Download, DownloadReport, download_all, safe_name
from producer.fetch import downloads_for
from producer.thumbnails import Thumbnail, ThumbnailReport, make_thumbnails, thumbnail_name

ProgressFactory = Callable[[str, int], Callable[[int], None]]
OUTPUTS_FOLDER = "outputs"
INPUTS_FOLDER = "inputs"
THUMBS_FOLDER = "thumbs"
# SigV4 presigned URLs live at most 7 days (and no longer than the credentials that
# signed them: a role's session ends sooner).
MAX_EXPIRY_SECONDS = 7 * 24 * 3600


@dataclass
class GallerySummary:
    batch_id: str
    index: str  # the index page: a path, or a presigned URL
    records: int = 0
    unreadable: int = 0  # record objects that are not result records
    downloads: DownloadReport = field(default_factory=DownloadReport)
    thumbnails: ThumbnailReport | None = None  # a local gallery without --full-size

    def line(self) -> str:
        copies = f"; {self.downloads.line()}" if self.downloads.downloaded or (
            self.downloads.unchanged or self.downloads.failed) else ""
        thumbs = f"; {self.thumbnails.line()}" if self.thumbnails else ""
        return f"batch {self.batch_id}: gallery of {self.records} jobs{copies}{thumbs}"

    @property
    def failed(self) -> list[str]:
        """What could not be downloaded or made into a thumbnail."""
        return self.downloads.failed + (self.thumbnails.failed if self.thumbnails else [])


def input_file_name(uri: str) -> str:
    """A local name per input URI: its file name, prefixed by a hash of the whole URI so
    inputs with the same name in different folders or buckets do not collide."""
    digest = hashlib.sha256(uri.encode()).hexdigest()[:10]
    return f"{digest}-{safe_name(posixpath.basename(uri))}"


def with_parameters(records: list[dict[str, Any]],
                    parameters: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with the strength/steps their job asked for, where the batch's jobs file
    has them (the record's own fields win)."""
    return [{**parameters.get(str(r.get("job_id")), {}), **r} for r in records]


def gallery_to_folder(s3: Any, output: S3Location, batch_id: str, dest: Path, *,
                      concurrency: int, progress: ProgressFactory,
                      page_size: int = DEFAULT_PAGE_SIZE,
                      full_size: bool = False) -> GallerySummary:
    """Download the records and write the pages into ``dest``: ``index.html``, the
    records in ``outputs/``, and a thumbnail of each input and output in ``thumbs/``
    (with ``full_size``: copies of the images in ``outputs/`` and ``inputs/`` instead).
    What is there already is kept."""
    jobs = finished_jobs(s3, output, batch_id)
    outputs = dest / OUTPUTS_FOLDER
    wanted = jobs if full_size else [replace(j, output=None) for j in jobs]  # records only
    report = download_all(s3, downloads_for(wanted, output.bucket, outputs),
                          concurrency=concurrency,
                          on_file=progress("records" if not full_size else "outputs",
                                           _object_count(wanted)))
    records, unreadable = _local_records(jobs, outputs)
    inputs = sorted({r["input"] for r in records
                     if str(r.get("input", "")).startswith(S3_SCHEME)})
    images: dict[tuple[str, str], tuple[str, str, Path]] = {}  # (role, uri) -> where
    for record in records:
        if record.get("output"):
            name = safe_name(posixpath.basename(record["output"]))
            location = parse_s3_uri(record["output"])
            images["output", record["output"]] = (
                location.bucket, location.key, outputs / name if full_size
                else dest / THUMBS_FOLDER / OUTPUTS_FOLDER / thumbnail_name(name))
    for uri in inputs:
        location = parse_s3_uri(uri)
        name = input_file_name(uri)
        images["input", uri] = (location.bucket, location.key,
                                dest / INPUTS_FOLDER / name if full_size
                                else dest / THUMBS_FOLDER / INPUTS_FOLDER / thumbnail_name(name))
    thumbnails = None
    if full_size:
        input_report = download_all(
            s3, [Download(b, k, path) for (role, _), (b, k, path) in images.items()
                 if role == "input"],
            concurrency=concurrency, on_file=progress("inputs", len(inputs)))
        report = _merged(report, input_report)
    else:
        thumbnails = make_thumbnails(
            s3, [Thumbnail(b, k, path) for b, k, path in images.values()],
            concurrency=concurrency, on_file=progress("thumbnails", len(images)))
    for record in records:
        for role in ("input", "output"):
            where = images.get((role, record.get(role)))
            if where is not None:
                record[f"local_{role}"] = str(where[2])
    index = write_gallery(with_parameters(records, job_parameters(s3, output, batch_id)),
                          dest, title=f"batch {batch_id}", page_size=page_size)
    return GallerySummary(batch_id, str(index), len(records), unreadable, report,
                          thumbnails)


def gallery_to_bucket(s3: Any, output: S3Location, batch_id: str, dest: S3Location, *,
                      presigner: Any, concurrency: int, expires: int,
                      page_size: int = DEFAULT_PAGE_SIZE) -> GallerySummary:
    """Write the pages under the ``dest`` prefix; images and page links are presigned
    URLs valid for ``expires`` seconds, so the bucket stays private. ``presigner`` is an
    S3 client that signs with SigV4 (botocore may presign with the legacy scheme, which
    newer regions refuse). Returns the index's presigned URL."""
    if not 1 <= expires <= MAX_EXPIRY_SECONDS:
        raise InvalidJob(f"--expires must be 1..{MAX_EXPIRY_SECONDS} seconds (7 days, the "
                         f"longest a presigned URL lives); got {expires}")
    jobs = finished_jobs(s3, output, batch_id)
    records, unreadable = _remote_records(s3, output.bucket, jobs, concurrency)

    def presign(bucket: str, key: str) -> str:
        return presigner.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)

    def image_src(record: Any, role: str) -> str | None:
        uri = record.get(role)
        if not isinstance(uri, str) or not uri.startswith(S3_SCHEME):
            return None
        location = parse_s3_uri(uri)
        return presign(location.bucket, location.key)

    def page_key(number: int) -> str:
        return dest.key + (INDEX if number == 1 else f"page-{number}.html")

    pages = render_gallery(with_parameters(records, job_parameters(s3, output, batch_id)),
                           image_src=image_src, title=f"batch {batch_id}",
                           page_size=page_size,
                           page_href=lambda n: presign(dest.bucket, page_key(n)))

    def put(page: Any) -> None:
        s3.put_object(Bucket=dest.bucket, Key=page_key(page.number),
                      Body=page.html.encode("utf-8"), ContentType="text/html; charset=utf-8",
                      CacheControl="no-store")

    with ThreadPoolExecutor(concurrency, thread_name_prefix="pages") as pool:
        list(pool.map(put, pages))
    return GallerySummary(batch_id, presign(dest.bucket, page_key(1)), len(records),
                          unreadable)


def _object_count(jobs: list[FinishedJob]) -> int:
    return sum((j.record is not None) + (j.output is not None) for j in jobs)


def _final_record(data: bytes | str) -> dict[str, Any] | None:
    """The record as JSON data when it is a finished result record, else None."""
    try:
        record = ResultRecord.model_validate(json.loads(data))
    except (ValueError, ValidationError):
        return None
    return record.model_dump(mode="json") if record.final else None


def _local_records(jobs: list[FinishedJob], folder: Path) -> tuple[list[dict[str, Any]], int]:
    records, unreadable = [], 0
    for job in jobs:
        if job.record is None:
            continue
        path = folder / safe_name(job.record.name)
        record = _final_record(path.read_bytes()) if path.is_file() else None
        if record is None:
            unreadable += 1
        else:
            records.append(record)
    return records, unreadable


def _remote_records(s3: Any, bucket: str, jobs: list[FinishedJob],
                    concurrency: int) -> tuple[list[dict[str, Any]], int]:
    def read(job: FinishedJob) -> dict[str, Any] | None:
        assert job.record is not None
        try:
            return _final_record(s3.get_object(Bucket=bucket, Key=job.record.key)["Body"].read())
        except (ClientError, BotoCoreError):
            return None

    with ThreadPoolExecutor(concurrency, thread_name_prefix="records") as pool:
        found = list(pool.map(read, [j for j in jobs if j.record is not None]))
    records = [r for r in found if r is not None]
    return records, len(found) - len(records)


def _merged(first: DownloadReport, second: DownloadReport) -> DownloadReport:
    return DownloadReport(downloaded=first.downloaded + second.downloaded,
                          unchanged=first.unchanged + second.unchanged,
                          bytes=first.bytes + second.bytes,
                          failed=first.failed + second.failed)
