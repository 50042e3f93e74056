"""Local folder mode: images from disk in, images and results.jsonl out, no AWS."""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from contract.errors import Img2ImgError, InputNotFound
from contract.job import GenerationParams, derive_job_id
from contract.result import ErrorInfo, ResultRecord
from worker.batching import group_batches
from worker.engine import BatchKey, Engine, GenerationItem
from worker.images import (
    IMAGE_EXTENSIONS,
    PreparedImage,
    decode_image,
    encode_image,
    prepare_image,
    restore_size,
)

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
WORKER_NAME = "local"


@dataclass(frozen=True)
class LocalJob:
    input_path: Path
    output_path: Path
    params: GenerationParams


@dataclass
class ReadyJob:
    job: LocalJob
    job_id: str
    seed: int
    prepared: PreparedImage
    started: float
    timings: dict[str, float] = field(default_factory=dict)


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


def collect_inputs(inputs: list[Path]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image file, path relative to its root) pairs, and files skipped as non-images.

    Folders are scanned recursively for image extensions; files named explicitly are
    always attempted, so a mislabelled file gets a failed record rather than silence.
    """
    found: list[tuple[Path, Path]] = []
    skipped: list[Path] = []
    for root in inputs:
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                if path.name.startswith("."):
                    continue
                if path.suffix.lower() in IMAGE_EXTENSIONS:
                    found.append((path, path.relative_to(root)))
                else:
                    skipped.append(path)
        else:
            found.append((root, Path(root.name)))
    return found, skipped


def plan_jobs(
    files: list[tuple[Path, Path]],
    output_dir: Path,
    *,
    models: list[str],
    prompts: list[str],
    choice_seed: int | None,
    make_params: Callable[[str, str], GenerationParams],
) -> list[LocalJob]:
    """One job per file, model and prompt picked per image, reproducibly.

    The pick depends only on the choice seed and the file's relative path, so adding
    a file to the folder does not change what the others get.
    """
    jobs = []
    taken: set[Path] = set()
    for path, relative in files:
        rng = random.Random(f"{choice_seed}:{relative.as_posix()}")
        model, prompt = rng.choice(models), rng.choice(prompts)
        params = make_params(model, prompt)
        out = output_dir / relative.with_suffix("." + params.output_format.extension)
        if out in taken:  # a.png and a.jpg both -> a.png: keep both
            base = f"{relative.stem}_{relative.suffix.lstrip('.')}"
            out = out.with_name(f"{base}{out.suffix}")
            counter = 2
            while out in taken:
                out = out.with_name(f"{base}_{counter}{out.suffix}")
                counter += 1
        if not out.resolve().is_relative_to(output_dir.resolve()):
            raise InputNotFound(f"{path}: its output {out} would leave {output_dir}")
        taken.add(out)
        jobs.append(LocalJob(input_path=path, output_path=out, params=params))
    return jobs


class LocalRunner:
    """Decode ahead in a thread pool, run batches on the engine, write in the pool."""

    def __init__(self, engine: Engine, *, max_batch_size: int, io_threads: int,
                 results_path: Path, on_result: Callable[[ResultRecord], None] = lambda r: None
                 ) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.io_threads = io_threads
        self.results_path = results_path
        self.on_result = on_result
        self.summary = RunSummary()
        self._lock = threading.Lock()

    def run(self, jobs: list[LocalJob]) -> RunSummary:
        started = time.perf_counter()
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        window = max(self.max_batch_size * 4, 8)
        with self.results_path.open("w") as results, ThreadPoolExecutor(
                self.io_threads, thread_name_prefix="io") as pool:
            self._results = results
            writes: list[Future] = []
            chunks = iter([jobs[i:i + window] for i in range(0, len(jobs), window)])
            pending = self._submit_reads(pool, next(chunks, []))
            for chunk_reads in self._prefetching(pool, chunks, pending):
                ready = [r for r in (f.result() for f in chunk_reads) if r is not None]
                for key, batch in group_batches(ready, self._key, self.max_batch_size):
                    writes.extend(self._run_batch(pool, key, batch))
            for write in writes:
                write.result()
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _prefetching(self, pool: ThreadPoolExecutor, chunks: Iterator[list[LocalJob]],
                     first: list[Future]) -> Iterator[list[Future]]:
        """Yield each chunk's reads after submitting the next chunk's, so decoding
        of chunk n+1 overlaps with the engine working on chunk n."""
        current = first
        while current:
            following = self._submit_reads(pool, next(chunks, []))
            yield current
            current = following

    def _submit_reads(self, pool: ThreadPoolExecutor, jobs: list[LocalJob]) -> list[Future]:
        return [pool.submit(self._read, job) for job in jobs]

    @staticmethod
    def _key(ready: ReadyJob) -> BatchKey:
        return BatchKey.of(ready.job.params, ready.prepared.size)

    def _read(self, job: LocalJob) -> ReadyJob | None:
        started = time.perf_counter()
        job_id: str | None = None
        try:
            try:
                data = job.input_path.read_bytes()
            except FileNotFoundError:
                raise InputNotFound(f"{job.input_path}: no such file") from None
            job_id = derive_job_id(
                f"file:{job.input_path.name}#{hashlib.sha256(data).hexdigest()}", job.params)
            image = decode_image(data, max_pixels=self.engine.settings.max_input_pixels,
                                 name=str(job.input_path))
            prepared = prepare_image(image, job.params.max_side,
                                     self.engine.settings.size_bucket)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a record
            self._record_failure(job, job_id, None, exc, started)
            return None
        ready = ReadyJob(job=job, job_id=job_id, seed=job.params.effective_seed(job_id),
                         prepared=prepared, started=started)
        ready.timings["read"] = time.perf_counter() - started
        return ready

    def _run_batch(self, pool: ThreadPoolExecutor, key: BatchKey,
                   batch: list[ReadyJob]) -> list[Future]:
        items = [GenerationItem(r.prepared.image, r.job.params.prompt,
                                r.job.params.negative_prompt, r.seed) for r in batch]
        gen_started = time.perf_counter()
        try:
            outputs = self.engine.generate(key, items)
        except Exception as exc:  # noqa: BLE001 - the batch fails, the run goes on
            log.exception("batch of %d failed", len(batch))
            for ready in batch:
                self._record_failure(ready.job, ready.job_id, ready.seed, exc, ready.started)
            return []
        per_image = (time.perf_counter() - gen_started) / len(batch)
        for ready in batch:
            ready.timings["inference"] = per_image
        return [pool.submit(self._write, ready, output, len(batch))
                for ready, output in zip(batch, outputs, strict=True)]

    def _write(self, ready: ReadyJob, output, batch_size: int) -> None:
        started = time.perf_counter()
        job = ready.job
        try:
            image = restore_size(output, ready.prepared, job.params.keep_size)
            job.output_path.parent.mkdir(parents=True, exist_ok=True)
            job.output_path.write_bytes(encode_image(image, job.params.output_format))
        except Exception as exc:  # noqa: BLE001
            self._record_failure(job, ready.job_id, ready.seed, exc, ready.started)
            return
        ready.timings["write"] = time.perf_counter() - started
        ready.timings["batch_size"] = batch_size
        self._record(ResultRecord(
            job_id=ready.job_id, status="done", input=str(job.input_path),
            output=str(job.output_path), model=job.params.model, prompt=job.params.prompt,
            seed=ready.seed, seconds=round(time.perf_counter() - ready.started, 4),
            timings={k: round(v, 4) for k, v in ready.timings.items()}, worker=WORKER_NAME))

    def _record_failure(self, job: LocalJob, job_id: str | None, seed: int | None,
                        exc: BaseException, started: float) -> None:
        if not isinstance(exc, Img2ImgError):
            log.warning("%s failed unexpectedly: %r", job.input_path, exc)
        self._record(ResultRecord(
            job_id=job_id or "-", status="failed", input=str(job.input_path), output=None,
            error=ErrorInfo.from_exception(exc), model=job.params.model,
            prompt=job.params.prompt, seed=seed,
            seconds=round(time.perf_counter() - started, 4), worker=WORKER_NAME))

    def _record(self, record: ResultRecord) -> None:
        # Called from the engine thread and the pool: one line at a time.
        with self._lock:
            self._results.write(record.to_json() + "\n")
            self._results.flush()
            if record.status == "done":
                self.summary.done += 1
            else:
                self.summary.failed += 1
        self.on_result(record)

