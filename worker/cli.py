"""``img2img-worker``: local folder mode, the SQS service, and the container health check."""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from common import cli_options as opt
from common.cli import (
    HelpGroup,
    clear_errors,
    fail,
    log_level_or,
    no_bars,
    progress_bars,
    run_app,
)
from contract.errors import Img2ImgError, InvalidJob
from contract.job import validate_params
from contract.settings import load_settings
from worker.settings import MemoryMode

DEFAULT_INPUTS = Path("data/input_images")

app = typer.Typer(no_args_is_help=True, context_settings=opt.CONTEXT_SETTINGS, cls=HelpGroup,
                  help="Stable Diffusion img2img worker: a local folder or the SQS fleet.")


@app.callback()
def _group(quiet: opt.Quiet = False, verbose: opt.Verbose = 0,
           region: opt.Region = None, profile: opt.Profile = None,
           endpoint_url: opt.EndpointUrl = None, version: opt.Version = False) -> None:
    """Stable Diffusion img2img worker: a local folder or the SQS fleet."""


@app.command()
def run(
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="Image files or folders (default data/input_images).")] = None,
    output_dir: Annotated[Path, typer.Option(help="Where outputs and results.jsonl go.")] = Path(
        "data/output_images"),
    model: opt.Models = None,
    prompt: opt.Prompts = None,
    negative_prompt: opt.NegativePrompt = opt.NEGATIVE_PROMPT,
    strength: opt.Strength = opt.STRENGTH,
    steps: opt.Steps = opt.STEPS,
    guidance_scale: opt.GuidanceScale = opt.GUIDANCE_SCALE,
    seed: opt.Seed = None,
    max_side: opt.MaxSide = opt.MAX_SIDE,
    keep_size: opt.KeepSize = opt.KEEP_SIZE,
    output_format: opt.Format = opt.FORMAT,
    scheduler: opt.Scheduler = opt.SCHEDULER,
    lora: opt.Loras = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Images per pipeline call (default IMG2IMG_MAX_BATCH_SIZE).")] = None,
    memory_mode: Annotated[MemoryMode | None, typer.Option(
        help="fast: all on the GPU; balanced: model CPU offload; lean: sequential offload "
        "(default IMG2IMG_MEMORY_MODE).")] = None,
    log_level: Annotated[str, typer.Option(help="Python log level, on stderr.")] = "WARNING",
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object (counts, files, failures) instead of lines; "
        "no progress bar.")] = False,
) -> None:
    """Process a local folder or files with no AWS at all; writes results.jsonl."""
    from worker.settings import WorkerSettings

    overrides = {k: v for k, v in {"max_batch_size": batch_size,
                                    "memory_mode": memory_mode}.items() if v is not None}
    try:
        settings = load_settings(WorkerSettings, flags={"max_batch_size": "--batch-size",
                                                        "memory_mode": "--memory-mode"},
                                 **overrides)
        models = model or settings.default_models
        prompts = prompt or settings.default_prompts
        common = dict(negative_prompt=negative_prompt, strength=strength, steps=steps,
                      guidance_scale=guidance_scale, seed=seed, max_side=max_side,
                      output_format=output_format, keep_size=keep_size, scheduler=scheduler,
                      **opt.lora_params(lora))
        for m in models:  # validate every option once, before any work
            validate_params(model=m, prompt=prompts[0] if prompts else "",
                            field_names=opt.FLAG_NAMES, **common)
    except Img2ImgError as exc:
        raise fail(str(exc)) from None
    if not models or not prompts:
        raise fail("no model or prompt: pass --model/--prompt or set "
                    "IMG2IMG_DEFAULT_MODELS/IMG2IMG_DEFAULT_PROMPTS")

    from common.logs import configure_logging
    from contract.locations import IMAGE_EXTENSIONS
    from contract.loras import check_lora_allowed, parse_lora_spec
    from worker.engine.model_refs import check_allowed, local_folder
    from worker.local_run import RESULTS_FILE, LocalRunner, collect_inputs, plan_jobs

    # The operator's own folders (-m /abs/path, -m ./rel/path) need no allow-list here;
    # the fleet's IMG2IMG_ALLOWED_MODELS still guards serve.
    folders = {m: local_folder(m) for m in models}
    for m, folder in folders.items():
        if folder is not None and not (folder / "model_index.json").is_file():
            raise fail(f"model folder {m}: {folder} is not a diffusers model folder (no "
                       "model_index.json)")
    models = [str(folders[m]) if folders[m] is not None else m for m in models]
    settings = settings.model_copy(update={"allowed_models": [
        *settings.allowed_models, *(glob.escape(str(f)) for f in folders.values() if f)]})
    try:
        for m in models:
            check_allowed(m, settings.allowed_models)
        for spec in lora or []:
            check_lora_allowed(parse_lora_spec(spec).ref, settings.allowed_loras)
    except Img2ImgError as exc:
        raise fail(str(exc)) from None
    configure_logging(log_level_or(log_level), fmt="text")

    roots = inputs or [DEFAULT_INPUTS]
    missing = [str(p) for p in roots if not p.exists()]
    if missing and not inputs:
        raise fail(f"no INPUTS given, and the default folder {DEFAULT_INPUTS} is not in "
                   f"{Path.cwd()}: pass image files or folders")
    if missing:
        raise fail(f"no such file or folder: {', '.join(missing)}")
    if output_dir.exists() and not output_dir.is_dir():
        raise fail(f"--output-dir {output_dir} is a file, not a folder")
    files, skipped = collect_inputs(roots, output_dir)
    if not files:
        raise fail(f"no images in {', '.join(map(str, roots))} (looked for "
                   f"{', '.join(sorted(IMAGE_EXTENSIONS))}; {len(skipped)} other files)")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(f"--output-dir {output_dir}: {exc.strerror or exc}") from None
    jobs = plan_jobs(files, output_dir, models=models, prompts=prompts, choice_seed=seed,
                     make_params=lambda m, p: validate_params(model=m, prompt=p, **common))
    from worker.engine.engine import Engine

    try:
        engine = Engine(settings)
        for m in dict.fromkeys(j.params.model for j in jobs):
            # what its family would refuse (a negative prompt on Flux) fails before it loads
            engine.apply_profile(validate_params(model=m, prompt=prompts[0], **common))
            engine.model(m)  # every model loads once, up front: a missing one fails here
    except Img2ImgError as exc:
        raise fail(str(exc)) from None
    with progress_bars() as bars:
        advance = no_bars("img2img", len(jobs)) if as_json else bars("img2img", len(jobs))
        runner = LocalRunner(engine, max_batch_size=settings.max_batch_size,
                             io_threads=settings.io_threads,
                             results_path=output_dir / RESULTS_FILE,
                             on_result=lambda r: advance(1))
        summary = runner.run(jobs)
    summary.skipped = len(skipped)
    from common.failures import failure_lines
    from common.gallery import write_gallery
    from common.results_file import read_results

    results = read_results(output_dir / RESULTS_FILE)
    gallery = write_gallery(results,
                            output_dir, title=f"img2img: {output_dir}")
    if as_json:
        typer.echo(json.dumps({
            "done": summary.done, "failed": summary.failed, "skipped": summary.skipped,
            "seconds": round(summary.seconds, 3),
            "results": str(output_dir / RESULTS_FILE), "gallery": str(gallery),
            "failures": [{"input": r.get("input"), "error": r.get("error")}
                         for r in results if r.get("status") == "failed"]}, indent=2))
        raise typer.Exit(1 if summary.failed else 0)
    typer.echo(f"{summary.line()}; results in {output_dir / RESULTS_FILE}; gallery {gallery}")
    for line in failure_lines(results, more=f"all in {output_dir / RESULTS_FILE}"):
        typer.echo(line, err=True)
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def serve(
    queue_url: Annotated[str | None, typer.Option(
        help="The job queue's URL. Default: IMG2IMG_QUEUE_URL.")] = None,
    exit_when_idle: Annotated[float | None, typer.Option(
        help="Exit after this many seconds with nothing received or held.")] = None,
    max_jobs: Annotated[int | None, typer.Option(
        help="Exit after finishing this many jobs.")] = None,
    log_level: Annotated[str, typer.Option(
        envvar="IMG2IMG_LOG_LEVEL", help="Python log level of the JSON log lines.")] = "INFO",
) -> None:
    """Long-poll IMG2IMG_QUEUE_URL, run batches, write results to S3, until stopped."""
    from common.logs import configure_logging

    configure_logging(log_level_or(log_level), fmt="json")
    import signal

    from common.aws import default_region_from_queue
    from worker.fleet.service import build_worker, install_signal_handlers
    from worker.settings import WorkerSettings

    with clear_errors():
        settings = load_settings(WorkerSettings,
                                 **({"queue_url": queue_url} if queue_url else {}))
        if not settings.queue_url:
            raise InvalidJob("no queue: pass --queue-url or set IMG2IMG_QUEUE_URL")
        default_region_from_queue(settings.queue_url)
        worker = build_worker(settings)
    install_signal_handlers(worker, (signal.SIGTERM, signal.SIGINT))
    worker.run(exit_when_idle=exit_when_idle, max_jobs=max_jobs)
    typer.echo(worker.summary_line(), err=True)
    if worker.fatal:
        raise fail(worker.fatal)


@app.command()
def healthcheck() -> None:
    """Exit 0 only when the worker loop made progress within IMG2IMG_HEALTH_MAX_AGE."""
    from worker.health import check_health
    from worker.settings import WorkerSettings

    try:
        settings = load_settings(WorkerSettings)
    except Img2ImgError as exc:
        raise fail(str(exc)) from None
    healthy, reason = check_health(settings.health_file, settings.health_max_age)
    typer.echo(("healthy: " if healthy else "unhealthy: ") + reason)
    raise typer.Exit(0 if healthy else 1)


def main() -> None:
    """The console script. It ends the process without the interpreter's teardown:
    freeing torch's and diffusers' modules takes seconds, and a worker that was told to
    stop (or has finished) has nothing left to clean up by then."""
    code: int | str | None = 0
    try:
        run_app(app)
    except SystemExit as exc:
        code = exc.code
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if isinstance(code, str):
        sys.stderr.write(code + "\n")
        sys.stderr.flush()
        code = 1
    os._exit(code or 0)


if __name__ == "__main__":
    main()
