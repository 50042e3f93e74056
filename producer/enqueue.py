"""``enqueue``: find the inputs (S3 prefix, local folder, jobs file), plan the jobs,
write the batch manifest and send the jobs."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.folders import scan_images
from contract.errors import InvalidJob
from contract.job import JobMessage
from contract.locations import S3_SCHEME, S3Location, is_image_key, output_dir, parse_s3_uri
from producer.batch_jobs import write_batch_jobs
from producer.jobs_file import JobRow, JobsFileError, read_jobs_file
from producer.listing import (
    MAX_KEYS_PER_LIST,
    SourceObject,
    describe_head_error,
    head_etags,
    list_images,
)
from producer.manifest import BatchManifest, write_manifest
from producer.planning import Defaults, PlannedInput, derive_batch_id, plan_jobs
from producer.sending import BatchSender, Outgoing, SendFailure
from producer.upload import key_of, local_etags, upload_folder, uploadable

# A progress factory: (description, total) -> advance(n). The CLI draws a bar with it.
ProgressFactory = Callable[[str, int], Callable[[int], None]]
_BATCH_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")  # JobMessage.batch_id's pattern


def no_progress(description: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass(frozen=True)
class EnqueueOptions:
    source: str | None
    jobs_file: Path | None = None
    bucket: str | None = None
    upload_prefix: str = "inputs/"
    output: str | None = None
    default_output_prefix: str = "outputs/"
    batch_id: str | None = None
    queue_url: str | None = None
    dry_run: bool = False
    concurrency: int = 8
    page_size: int = MAX_KEYS_PER_LIST  # ListObjectsV2 MaxKeys; small in tests


@dataclass(frozen=True)
class Source:
    """Where the inputs are: ``prefix`` in S3, after uploading ``folder`` when given."""

    prefix: S3Location
    folder: Path | None
    described: str  # what the batch id and the manifest record as the source
    single: S3Location | None = None  # SOURCE named one image object: only it is enqueued


@dataclass
class EnqueueSummary:
    batch_id: str
    source: str
    output: S3Location
    found: int = 0
    skipped: int = 0
    skipped_reasons: list[str] = field(default_factory=list)  # inputs that made no job
    enqueued: int = 0
    failed: list[SendFailure] = field(default_factory=list)
    uploaded: int | None = None
    unchanged: int | None = None
    jobs: list[JobMessage] = field(default_factory=list)
    manifest: S3Location | None = None

    def line(self) -> str:
        upload = (f"uploaded {self.uploaded}, unchanged {self.unchanged}; "
                  if self.uploaded is not None else "")
        return (f"batch {self.batch_id}: {upload}found {self.found}, enqueued {self.enqueued}, "
                f"skipped {self.skipped}, failed {len(self.failed)}")


def as_prefix(bucket: str, prefix: str) -> S3Location:
    return parse_s3_uri(f"{S3_SCHEME}{bucket}/{prefix.lstrip('/')}", prefix=True)


def resolve_source(options: EnqueueOptions) -> Source:
    """The S3 prefix the inputs live under; InvalidJob names what is missing."""
    text = options.source
    if text and text.startswith(S3_SCHEME) and not text.endswith("/") and is_image_key(text):
        single = parse_s3_uri(text)
        if options.jobs_file is not None:
            raise InvalidJob(f"with --jobs, SOURCE is the prefix rows are relative to, not "
                             f"one image: {text!r}")
        return Source(prefix=as_prefix(single.bucket, output_dir(single.key)), folder=None,
                      described=single.uri, single=single)
    if text and text.startswith(S3_SCHEME):
        prefix = parse_s3_uri(text, prefix=True)
        if not prefix.bucket:
            raise InvalidJob(f"SOURCE needs a bucket: {text!r}")
        return Source(prefix=prefix, folder=None, described=prefix.uri)
    if text:
        folder = Path(text)
        if not folder.is_dir():
            raise InvalidJob(f"SOURCE is neither an s3:// URI nor a folder: {text!r}")
        if not options.bucket:
            raise InvalidJob("a local folder is uploaded first: pass --bucket or set "
                             "IMG2IMG_BUCKET")
        dest = as_prefix(options.bucket, options.upload_prefix)
        return Source(prefix=dest, folder=folder,
                      described=f"{dest.uri} (from {folder.resolve()})")
    if options.jobs_file is None:
        raise InvalidJob("pass SOURCE (s3://bucket/prefix/ or a folder) or --jobs FILE")
    if not options.bucket:
        raise InvalidJob("a jobs file without SOURCE needs --bucket (or IMG2IMG_BUCKET) for "
                         "inputs given as keys")
    return Source(prefix=as_prefix(options.bucket, ""), folder=None,
                  described=f"jobs file {options.jobs_file.name}")


def resolve_output(options: EnqueueOptions, source: Source) -> S3Location:
    if options.output:
        if not options.output.startswith(S3_SCHEME):
            raise InvalidJob(f"--output must be s3://bucket/prefix/: {options.output!r}")
        return parse_s3_uri(options.output, prefix=True)
    return as_prefix(source.prefix.bucket, options.default_output_prefix)


def row_location(row: JobRow, base: S3Location) -> S3Location:
    """A row's input: an s3:// URI, or a key relative to the source prefix."""
    if row.input.startswith(S3_SCHEME):
        return parse_s3_uri(row.input)
    return S3Location(bucket=base.bucket, key=base.key + row.input.lstrip("/"))


def relative_to(location: S3Location, base: S3Location) -> str:
    if location.bucket == base.bucket and location.key.startswith(base.key):
        return location.key[len(base.key):]
    return location.key


class Enqueuer:
    """One enqueue run; the clients are passed in (the CLI builds them)."""

    def __init__(self, s3: Any, sqs: Any | None, options: EnqueueOptions, defaults: Defaults,
                 progress: ProgressFactory = no_progress) -> None:
        self.s3 = s3
        self.sqs = sqs
        self.options = options
        self.defaults = defaults
        self.progress = progress

    def run(self) -> EnqueueSummary:
        options = self.options
        if options.batch_id is not None and not _BATCH_ID.match(options.batch_id):
            raise InvalidJob(f"--batch-id: use 1-128 letters, digits, '.', '_' or '-' "
                             f"(got {options.batch_id!r})")
        self.defaults.check()
        if not options.dry_run:
            if not options.queue_url:
                raise InvalidJob("no queue URL: pass --queue-url or set IMG2IMG_QUEUE_URL")
            assert self.sqs is not None
            self.sqs.get_queue_attributes(QueueUrl=options.queue_url,
                                          AttributeNames=["QueueArn"])  # fail early
        source = resolve_source(options)
        output = resolve_output(options, source)
        rows: list[JobRow] = []
        problems: list[str] = []
        jobs_digest = None
        if options.jobs_file is not None:
            if not options.jobs_file.is_file():
                raise InvalidJob(f"--jobs: no such file: {options.jobs_file}")
            jobs_digest = hashlib.sha256(options.jobs_file.read_bytes()).hexdigest()
            rows, problems = read_jobs_file(options.jobs_file)
        batch_id = options.batch_id or derive_batch_id(
            source=source.described, output=output, defaults=self.defaults,
            jobs_file_sha256=jobs_digest)
        summary = EnqueueSummary(batch_id=batch_id, source=source.described, output=output)

        objects = self._objects(source, output, summary, listing=not rows)
        if options.jobs_file is not None:
            inputs = self._row_inputs(rows, source.prefix, objects, problems)
        else:
            inputs = [PlannedInput(source=o) for o in objects]
        plan = plan_jobs(inputs, self.defaults, output=output, batch_id=batch_id)
        problems.extend(plan.problems)
        if problems:
            assert options.jobs_file is not None
            raise JobsFileError(options.jobs_file, sorted(problems, key=_line_number))
        summary.found = len(inputs)
        summary.skipped += plan.duplicates + len(plan.skipped)
        summary.skipped_reasons.extend(plan.skipped)
        summary.jobs = plan.jobs
        if options.dry_run or not plan.jobs:
            return summary
        self._send(plan.jobs, summary)
        return summary

    def _objects(self, source: Source, output: S3Location, summary: EnqueueSummary, *,
                 listing: bool) -> list[SourceObject]:
        """Upload a local folder, or list the S3 prefix (not needed for a jobs file)."""
        prefix = source.prefix
        if source.folder is not None:
            files, others = scan_images(source.folder)
            ignored = len(others)
            files, too_long = uploadable(files, prefix.key)
            summary.skipped += len(too_long)
            summary.skipped_reasons.extend(too_long)
            if self.options.dry_run:
                etags = local_etags(files, prefix.key)
            else:
                advance = self.progress("upload", len(files))
                uploaded = upload_folder(self.s3, source.folder, prefix,
                                         concurrency=self.options.concurrency,
                                         on_file=lambda: advance(1))
                etags = uploaded.etags
                summary.uploaded, summary.unchanged = uploaded.uploaded, uploaded.unchanged
            summary.skipped += ignored if listing else 0
            return [SourceObject(location=S3Location(bucket=prefix.bucket,
                                                     key=key_of(f, prefix.key)),
                                 etag=etags[key_of(f, prefix.key)], relative=f.relative)
                    for f in files]
        if not listing:
            return []
        if source.single is not None:
            return [self._single_object(source.single, prefix)]
        exclude = (output.key,) if output.bucket == prefix.bucket and output.key else ()
        found = list_images(self.s3, prefix, exclude_prefixes=exclude,
                            page_size=self.options.page_size)
        summary.skipped += found.ignored
        return found.images

    def _single_object(self, location: S3Location, prefix: S3Location) -> SourceObject:
        """The one image SOURCE names, with its ETag; InvalidJob when it is not there."""
        etag = head_etags(self.s3, [location], concurrency=1)[location]
        if not isinstance(etag, str):
            raise InvalidJob(f"{describe_head_error(location, etag)} (a SOURCE that ends "
                             "with an image extension is one object; end a prefix with '/')")
        return SourceObject(location=location, etag=etag,
                            relative=location.key[len(prefix.key):])

    def _row_inputs(self, rows: list[JobRow], base: S3Location, known: list[SourceObject],
                    problems: list[str]) -> list[PlannedInput]:
        """Resolve each row's input and ETag (from the upload, else HEAD)."""
        etags = {o.location: o.etag for o in known}
        located: list[tuple[JobRow, S3Location]] = []
        for row in rows:
            try:
                located.append((row, row_location(row, base)))
            except (InvalidJob, ValueError) as exc:
                problems.append(f"line {row.line}: input: {exc}")
        missing = [loc for _, loc in located if loc not in etags]
        heads = head_etags(self.s3, missing, concurrency=self.options.concurrency)
        inputs = []
        for row, location in located:
            etag = etags.get(location) or heads.get(location)
            if not isinstance(etag, str):
                problems.append(f"line {row.line}: input: {describe_head_error(location, etag)}")
                continue
            inputs.append(PlannedInput(
                source=SourceObject(location=location, etag=etag,
                                    relative=relative_to(location, base)),
                overrides=row.overrides, line=row.line))
        return inputs

    def _send(self, jobs: list[JobMessage], summary: EnqueueSummary) -> None:
        options = self.options
        assert options.queue_url is not None
        manifest = BatchManifest(batch_id=summary.batch_id, total=len(jobs),
                                 queue_url=options.queue_url, source=summary.source,
                                 output=summary.output.uri,
                                 shard_totals=BatchManifest.shard_totals_of(
                                     j.job_id for j in jobs),
                                 models=BatchManifest.first_distinct(j.model for j in jobs),
                                 prompts=BatchManifest.first_distinct(
                                     j.prompt for j in jobs))
        # Written first, so ``status`` knows the total while the jobs are still going out.
        summary.manifest = write_manifest(self.s3, summary.output, manifest)
        write_batch_jobs(self.s3, summary.output, summary.batch_id, jobs)
        sender = BatchSender(self.sqs, options.queue_url, concurrency=options.concurrency)
        report = sender.send_all((Outgoing(j.job_id, j.to_json()) for j in jobs),
                                 on_done=self.progress("enqueue", len(jobs)))
        summary.enqueued = report.sent
        summary.failed = report.failed
        if report.failed:  # the totals count only jobs that can finish
            unsent = {f.id for f in report.failed}
            write_manifest(self.s3, summary.output, manifest.model_copy(update={
                "total": report.sent, "not_enqueued": len(report.failed),
                "shard_totals": BatchManifest.shard_totals_of(
                    j.job_id for j in jobs if j.job_id not in unsent)}))


def _line_number(problem: str) -> int:
    match = re.match(r"line (\d+):", problem)
    return int(match.group(1)) if match else 0
