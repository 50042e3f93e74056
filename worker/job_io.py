"""The per-job S3 work around the engine: read and prepare an input, write an output,
its result record and its batch marker. Runs in the worker's I/O thread pool."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from PIL import Image

from contract.errors import LocationNotAllowed
from contract.job import JobMessage
from contract.locations import S3Location, batch_marker_key, is_within, result_key
from contract.result import ErrorInfo, ResultRecord
from worker.images import PreparedImage, decode_image, encode_image, prepare_image, restore_size
from worker.settings import WorkerSettings
from worker.storage import S3Storage


@dataclass
class JobState:
    """One job on its way through the worker."""

    job: JobMessage
    receipt: str
    received_at: float  # time.monotonic()
    prepared: PreparedImage | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.job.effective_seed(self.job.job_id)

    def result_location(self) -> S3Location:
        return S3Location(bucket=self.job.output.bucket, key=result_key(self.job.output.key))


def check_locations(job: JobMessage, settings: WorkerSettings) -> None:
    """Input must lie under IMG2IMG_ALLOWED_INPUTS and output under ..._OUTPUTS (if set)."""
    if settings.allowed_inputs and not is_within(job.input, settings.allowed_inputs):
        raise LocationNotAllowed(
            f"input {job.input.uri} is outside IMG2IMG_ALLOWED_INPUTS "
            f"({','.join(settings.allowed_inputs)})")
    if settings.allowed_outputs and not is_within(job.output, settings.allowed_outputs):
        raise LocationNotAllowed(
            f"output {job.output.uri} is outside IMG2IMG_ALLOWED_OUTPUTS "
            f"({','.join(settings.allowed_outputs)})")


def output_allowed(output: S3Location, settings: WorkerSettings) -> bool:
    return not settings.allowed_outputs or is_within(output, settings.allowed_outputs)


def already_done(storage: S3Storage, state: JobState) -> ResultRecord | None:
    """The job's done record if an earlier delivery finished it."""
    data = storage.read_json(state.result_location())
    if data and data.get("status") == "done":
        return ResultRecord.model_validate(data)
    return None


def read_and_prepare(storage: S3Storage, state: JobState, settings: WorkerSettings) -> None:
    started = time.perf_counter()
    data = storage.read(state.job.input)
    downloaded = time.perf_counter()
    image = decode_image(data, max_pixels=settings.max_input_pixels, name=state.job.input.uri)
    state.prepared = prepare_image(image, state.job.max_side, settings.size_bucket)
    state.timings["download"] = downloaded - started
    state.timings["decode"] = time.perf_counter() - downloaded


def write_output(storage: S3Storage, state: JobState, output: Image.Image,
                 worker_id: str) -> ResultRecord:
    """Conditional PUT of the output, then the done record and the batch marker."""
    job = state.job
    assert state.prepared is not None
    started = time.perf_counter()
    data = encode_image(restore_size(output, state.prepared, job.keep_size), job.output_format)
    encoded = time.perf_counter()
    written = storage.put_if_absent(job.output, data, job.output_format.content_type,
                                    metadata={"job-id": job.job_id})
    state.timings["encode"] = encoded - started
    state.timings["upload"] = time.perf_counter() - encoded
    record = done_record(state, worker_id)
    if not written:
        # Another delivery wrote the same deterministic output first; keep its record.
        existing = already_done(storage, state)
        if existing is not None:
            write_marker(storage, job, "done")
            return existing
    storage.put(state.result_location(), record.to_json().encode(), "application/json")
    write_marker(storage, job, "done")
    return record


def done_record(state: JobState, worker_id: str) -> ResultRecord:
    job = state.job
    return ResultRecord(
        job_id=job.job_id, batch_id=job.batch_id, status="done", input=job.input.uri,
        output=job.output.uri, model=job.model, prompt=job.prompt, seed=state.seed,
        seconds=round(time.monotonic() - state.received_at, 4),
        timings={k: round(v, 4) for k, v in state.timings.items()}, worker=worker_id)


def write_failure(storage: S3Storage, *, job_id: str, batch_id: str | None,
                  input_uri: str, output: S3Location, error: BaseException,
                  worker_id: str, seconds: float, model: str | None = None,
                  prompt: str | None = None, seed: int | None = None) -> ResultRecord:
    """The failed record at ``<output key>.json`` and the batch marker."""
    record = ResultRecord(
        job_id=job_id, batch_id=batch_id, status="failed", input=input_uri, output=None,
        error=ErrorInfo.from_exception(error), model=model, prompt=prompt, seed=seed,
        seconds=round(seconds, 4), worker=worker_id)
    storage.put(S3Location(bucket=output.bucket, key=result_key(output.key)),
                record.to_json().encode(), "application/json")
    if batch_id:
        storage.put(S3Location(bucket=output.bucket,
                               key=batch_marker_key(output.key, batch_id, job_id, "failed")),
                    b"", "application/octet-stream")
    return record


def write_marker(storage: S3Storage, job: JobMessage, status: str) -> None:
    storage.put(S3Location(bucket=job.output.bucket,
                           key=batch_marker_key(job.output.key, job.batch_id, job.job_id,
                                                status)),
                b"", "application/octet-stream")
