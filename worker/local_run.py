"""Local folder mode: images from disk in, images and results.jsonl out, no AWS.

The same job pipeline as the fleet (worker/job_pipeline.py), with a folder as the source
and sink: files are read and decoded ahead in I/O threads, batches run on the engine,
outputs are written while the next batch computes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from common.folders import output_name, scan_images
from contract.errors import Img2ImgError, InputNotFound
from contract.job import GenerationParams, derive_job_id
from contract.picks import pick_model_and_prompt
from contract.result import ResultRecord
from worker.engine.engine import Engine
from worker.images import PixelBudget, decode_and_prepare, encode_image, restore_size
from worker.job_pipeline import JobPipeline, JobSource
from worker.jobs import Job, Outcome, Readiness, Status

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
WORKER_NAME = "local"
# Jobs read ahead of the engine: this many full batches (at least PREFETCH_MIN jobs).
PREFETCH_BATCHES = 4
PREFETCH_MIN = 8


# The stages a local job spends its own time in (its share of its batch for inference).
OWN_STAGES = ("read", "inference", "write")


@dataclass(eq=False)
class FileJob(Job):
    input_path: Path = Path()
    output_path: Path = Path()

    def seconds(self) -> float:
        """The job's own time: its read, its share of its batch, its write. Every file
        of a run is there from the start, so time spent waiting for the engine says
        nothing about this image."""
        return round(sum(self.timings.get(stage, 0.0) for stage in OWN_STAGES), 4)


@dataclass
class RunSummary:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        total = self.done + self.failed
        per_image = f", {self.seconds / total:.2f} s/image" if total else ""
        return (f"done {self.done}, failed {self.failed}, skipped {self.skipped} "
                f"(not images) in {self.seconds:.1f} s{per_image}")


def collect_inputs(inputs: list[Path], output_dir: Path | None = None
                   ) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image file, path relative to its root) pairs, and files skipped as non-images.

    Folders are scanned recursively for image extensions; files named explicitly are
    always attempted, so a mislabelled file gets a failed record rather than silence.
    A scanned folder's files under ``output_dir`` are left out: outputs written inside
    the input folder are not inputs of the next run.
    """
    outputs = output_dir.resolve() if output_dir is not None else None

    def is_output(path: Path) -> bool:
        return outputs is not None and path.resolve().is_relative_to(outputs)

    found: list[tuple[Path, Path]] = []
    skipped: list[Path] = []
    for root in inputs:
        if root.is_dir():
            images, others = scan_images(root)
            found.extend((image.path, Path(image.relative)) for image in images
                         if not is_output(image.path))
            skipped.extend(p for p in others if not is_output(p))
        else:
            found.append((root, Path(root.name)))
    return found, skipped


def plan_jobs(files: list[tuple[Path, Path]], output_dir: Path, *, models: list[str],
              prompts: list[str], choice_seed: int | None,
              make_params: Callable[[str, str], GenerationParams]) -> list[FileJob]:
    """One job per file, model and prompt picked per image (``contract.picks``)."""
    jobs = []
    taken: set[Path] = set()
    for path, relative in files:
        model, prompt = pick_model_and_prompt(models, prompts, seed=choice_seed,
                                              name=relative.as_posix())
        params = make_params(model, prompt)
        out = output_dir / output_name(relative, params.output_format.extension, taken)
        if not out.resolve().is_relative_to(output_dir.resolve()):
            raise InputNotFound(f"{path}: its output {out} would leave {output_dir}")
        jobs.append(FileJob(job_id="", params=params, source=str(path), input_path=path,
                            output_path=out))
    return jobs


class FolderSource(JobSource[FileJob]):
    """Reads files, writes files, appends one results.jsonl line per job."""

    def __init__(self, results, *, max_input_pixels: int, size_bucket: int,
                 pixels: PixelBudget, on_result: Callable[[ResultRecord], None]) -> None:
        self._results = results
        self.max_input_pixels = max_input_pixels
        self.size_bucket = size_bucket
        self.pixels = pixels
        self.on_result = on_result
        self.summary = RunSummary()
        self.ended_count = 0
        self._lock = threading.Lock()

    def prepare(self, job: FileJob) -> Readiness | Outcome:
        started = time.perf_counter()
        try:
            data = job.input_path.read_bytes()
        except FileNotFoundError:
            raise InputNotFound(f"{job.input_path}: no such file") from None
        job.job_id = derive_job_id(
            f"file:{job.input_path.name}#{hashlib.sha256(data).hexdigest()}", job.params)
        job.prepared = decode_and_prepare(
            data, max_pixels=self.max_input_pixels, max_side=job.params.max_side,
            size_bucket=self.size_bucket, name=str(job.input_path), budget=self.pixels)
        job.timings["read"] = time.perf_counter() - started
        return Readiness.READY

    def write(self, job: FileJob, image: Image.Image) -> Outcome:
        started = time.perf_counter()
        assert job.prepared is not None
        restored = restore_size(image, job.prepared, job.params.keep_size)
        job.output_path.parent.mkdir(parents=True, exist_ok=True)
        job.output_path.write_bytes(encode_image(restored, job.params.output_format))
        job.timings["write"] = time.perf_counter() - started
        return Outcome(Status.DONE, record=job.done_record(str(job.output_path), WORKER_NAME))

    def failure(self, job: FileJob, error: BaseException) -> Outcome:
        if not isinstance(error, Img2ImgError):
            log.warning("%s failed unexpectedly: %r", job.input_path, error)
        return Outcome(Status.FAILED, record=job.failed_record(error, WORKER_NAME))

    def ended(self, job: FileJob, outcome: Outcome) -> None:
        record = outcome.record or job.failed_record(
            RuntimeError(outcome.reason or outcome.status.value), WORKER_NAME)
        with self._lock:  # called from the engine thread and the I/O threads
            self._results.write(record.to_json() + "\n")
            self._results.flush()
            if record.status == "done":
                self.summary.done += 1
            else:
                self.summary.failed += 1
            self.ended_count += 1
        self.on_result(record)

    def lost(self, job: FileJob, error: BaseException) -> None:
        self.ended(job, Outcome(Status.FAILED, reason=repr(error)))


class LocalRunner:
    """Run planned jobs through the pipeline; one results.jsonl line per job."""

    def __init__(self, engine: Engine, *, max_batch_size: int, io_threads: int,
                 results_path: Path, on_result: Callable[[ResultRecord], None] = lambda r: None
                 ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.io_threads = io_threads
        self.results_path = results_path
        self.on_result = on_result

    def run(self, jobs: list[FileJob]) -> RunSummary:
        started = time.perf_counter()
        settings = self.engine.settings
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        with self.results_path.open("w") as results:
            source = FolderSource(results, max_input_pixels=settings.max_input_pixels,
                                  size_bucket=settings.size_bucket,
                                  pixels=PixelBudget(settings.decode_pixel_budget),
                                  on_result=self.on_result)
            pipeline: JobPipeline[FileJob] = JobPipeline(
                self.engine, source, max_batch_size=self.max_batch_size,
                io_threads=self.io_threads,
                prefetch_jobs=max(self.max_batch_size * PREFETCH_BATCHES, PREFETCH_MIN),
                same_batches_every_run=True)
            feeder = threading.Thread(target=self._feed, args=(pipeline, jobs),
                                      name="feeder", daemon=True)
            feeder.start()
            try:
                pipeline.run(until=lambda: source.ended_count >= len(jobs))
                pipeline.drain()
            finally:
                pipeline.shutdown()
        source.summary.seconds = time.perf_counter() - started
        return source.summary

    @staticmethod
    def _feed(pipeline: JobPipeline[FileJob], jobs: list[FileJob]) -> None:
        """Submit jobs as the prefetch has room, so reading stays ahead of the engine."""
        for job in jobs:
            while pipeline.wait_for_capacity(give_up=lambda: False) <= 0:
                pass
            pipeline.submit(job)
