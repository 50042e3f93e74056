"""``img2img-producer``: enqueue jobs, watch a batch, redrive the DLQ, print the schema."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from common import cli_options as opt
from common.cli import clear_errors, fail, progress_bars, run_app
from contract.errors import InvalidJob
from contract.locations import S3_SCHEME, S3Location, parse_s3_uri

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Enqueue img2img jobs on SQS and follow them.")
log = logging.getLogger("producer")

QueueOpt = Annotated[str | None, typer.Option(
    help="The job queue's URL. Default: IMG2IMG_QUEUE_URL.")]


@app.callback()
def _group(log_level: Annotated[str, typer.Option(help="Python log level.")] = "WARNING"
           ) -> None:
    """Enqueue img2img jobs on SQS and follow them."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _settings(**overrides: Any) -> Any:
    from contract.settings import load_settings
    from producer.settings import ProducerSettings

    return load_settings(ProducerSettings,
                         **{k: v for k, v in overrides.items() if v is not None})


@app.command()
def enqueue(
    source: Annotated[str | None, typer.Argument(
        help="s3://bucket/prefix/ (every image under it) or a local folder (uploaded to "
        "--bucket first). Optional with --jobs.")] = None,
    jobs: Annotated[Path | None, typer.Option(
        "--jobs", help="CSV or JSONL, one image per row: 'input' (s3:// URI or key relative "
        "to SOURCE) and optional model, prompt, negative_prompt, strength, steps, ... "
        "Every row is checked first; any bad row aborts the run before anything is sent.")
    ] = None,
    bucket: Annotated[str | None, typer.Option(
        help="Bucket a local folder is uploaded to. Default: IMG2IMG_BUCKET.")] = None,
    upload_prefix: Annotated[str | None, typer.Option(
        help="Prefix a local folder is uploaded under. Default: IMG2IMG_UPLOAD_PREFIX "
        "(inputs/).")] = None,
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
    output: Annotated[str | None, typer.Option(
        help="s3://bucket/prefix/ for outputs. Default: IMG2IMG_OUTPUT_PREFIX (outputs/) "
        "in the source bucket.")] = None,
    batch_id: Annotated[str | None, typer.Option(
        help="Default: derived from source and parameters (the same run, the same id).")
    ] = None,
    queue_url: QueueOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the jobs as JSON lines; upload and send nothing.")] = False,
    concurrency: Annotated[int | None, typer.Option(
        help="Parallel S3/SQS calls. Default: IMG2IMG_CONCURRENCY (8).")] = None,
    list_page_size: Annotated[int, typer.Option(hidden=True, min=1, max=1000)] = 1000,
) -> None:
    """Turn images into jobs on the queue: 10 per SendMessageBatch, in parallel."""
    from common import aws
    from producer.enqueue import EnqueueOptions, Enqueuer, no_progress
    from producer.planning import Defaults

    with clear_errors():
        settings = _settings(queue_url=queue_url, bucket=bucket, concurrency=concurrency)
        defaults = Defaults(
            models=list(model or settings.default_models),
            prompts=list(prompt or settings.default_prompts),
            common=dict(negative_prompt=negative_prompt, strength=strength, steps=steps,
                        guidance_scale=guidance_scale, seed=seed, max_side=max_side,
                        output_format=output_format.value, keep_size=keep_size,
                        scheduler=scheduler))
        options = EnqueueOptions(
            source=source, jobs_file=jobs, bucket=settings.bucket,
            upload_prefix=upload_prefix or settings.upload_prefix, output=output,
            default_output_prefix=settings.output_prefix, batch_id=batch_id,
            queue_url=settings.queue_url, dry_run=dry_run,
            concurrency=settings.concurrency, page_size=list_page_size)
        pool = settings.concurrency + 4
        s3 = aws.s3_client(max_pool_connections=pool)
        sqs = None if dry_run else aws.sqs_client(max_pool_connections=pool)
        if dry_run:
            summary = Enqueuer(s3, sqs, options, defaults, no_progress).run()
        else:
            with progress_bars() as bars:
                summary = Enqueuer(s3, sqs, options, defaults, bars).run()
    if dry_run:
        for job in summary.jobs:
            typer.echo(job.to_json())
        typer.echo(f"dry run, nothing sent: {summary.line()}", err=True)
        return
    typer.echo(summary.line())
    for reason in summary.skipped_reasons[:20]:
        typer.echo(f"  skipped: {reason}", err=True)
    if len(summary.skipped_reasons) > 20:
        typer.echo(f"  ... and {len(summary.skipped_reasons) - 20} more skipped", err=True)
    for failure in summary.failed[:20]:
        typer.echo(f"  not enqueued: job {failure.id}: {failure.code}: {failure.message}",
                   err=True)
    if summary.manifest is not None:
        typer.echo(f"manifest: {summary.manifest.uri}")
        typer.echo(f"follow it: img2img-producer status --batch-id {summary.batch_id} "
                   f"--output {summary.output.uri} --watch")
    if summary.failed:
        raise typer.Exit(1)


def _output_location(output: str | None, settings: Any) -> S3Location:
    if output:
        if not output.startswith(S3_SCHEME):
            raise InvalidJob(f"--output must be s3://bucket/prefix/: {output!r}")
        return parse_s3_uri(output, prefix=True)
    if not settings.bucket:
        raise InvalidJob("where are the outputs? pass --output s3://bucket/prefix/ or set "
                         "IMG2IMG_BUCKET")
    return parse_s3_uri(f"{S3_SCHEME}{settings.bucket}/{settings.output_prefix}", prefix=True)


@app.command()
def status(
    batch_id: Annotated[str | None, typer.Option(help="Show this batch's progress.")] = None,
    output: Annotated[str | None, typer.Option(
        help="The batch's output prefix, s3://bucket/prefix/. Default: IMG2IMG_BUCKET + "
        "IMG2IMG_OUTPUT_PREFIX.")] = None,
    queue_url: QueueOpt = None,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Show a live progress bar until every job is done or failed "
        "(exit 0 either way; failures are counted).")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --watch.",
                                            min=0.05)] = 5.0,
    failures: Annotated[bool, typer.Option(
        "--failures", help="List the failed jobs' errors (reads their result records).")
    ] = False,
    timeout: Annotated[float | None, typer.Option(
        help="Give up watching after this many seconds (exit 1). A job whose message went "
        "to the DLQ has no marker, so without this a watch can wait forever.", min=0)
    ] = None,
) -> None:
    """Queue depth (visible, in flight, delayed, DLQ) and a batch's done/failed/rate/ETA."""
    from common import aws
    from producer.queues import queue_depth
    from producer.status import batch_progress, failed_records

    with clear_errors():
        settings = _settings(queue_url=queue_url)
        if (watch or failures) and not batch_id:
            raise InvalidJob("--watch and --failures need --batch-id")
        progress = None
        if batch_id:
            location = _output_location(output, settings)
            s3 = aws.s3_client()
            progress = batch_progress(s3, location, batch_id)
            if progress.manifest is None and watch:
                raise InvalidJob(f"no manifest for batch {batch_id} under {location.uri}: "
                                 "check --batch-id and --output")
        url = settings.queue_url or (progress.manifest.queue_url
                                     if progress and progress.manifest else None)
        if not url and not batch_id:
            raise InvalidJob("no queue URL: pass --queue-url or set IMG2IMG_QUEUE_URL")
        if url:
            depth = queue_depth(aws.sqs_client(), url)
            q = depth.queue
            typer.echo(f"queue {url}: visible {q.visible}, in flight {q.in_flight}, "
                       f"delayed {q.delayed}")
            if depth.dlq is not None:
                typer.echo(f"dlq {depth.dlq_url}: {depth.dlq.visible} messages "
                           f"({depth.dlq.in_flight} in flight)")
            else:
                typer.echo("dlq: none (the queue has no RedrivePolicy)")
        if progress is not None:
            if watch and not progress.complete:
                progress = _watch(s3, location, batch_id, interval, timeout)
            typer.echo(_batch_line(progress))
            if failures and progress.failed_job_ids:
                for record in failed_records(s3, location, progress.failed_job_ids):
                    error = record.error
                    typer.echo(f"  failed {record.job_id} {record.input}: "
                               f"{error.type if error else '?'}: "
                               f"{error.message if error else ''}")
    if watch and progress is not None and not progress.complete:
        typer.echo(f"gave up after {timeout} s; is the DLQ holding some of its jobs?", err=True)
        raise typer.Exit(1)


def _batch_line(progress: Any) -> str:
    from producer.status import format_seconds, utc_now

    now = utc_now()
    total = "unknown (no manifest)" if progress.total is None else str(progress.total)
    rate = progress.rate(now)
    state = "finished" if progress.complete else f"eta {format_seconds(progress.eta_seconds(now))}"
    return (f"batch {progress.batch_id}: done {progress.done}, failed {progress.failed}, "
            f"total {total}, rate {'unknown' if rate is None else f'{rate:.2f} jobs/s'}, "
            f"{state}")


def _watch(s3: Any, location: S3Location, batch_id: str, interval: float,
           timeout: float | None) -> Any:
    """Poll the markers and draw a bar until done + failed reaches the total."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from producer.status import batch_progress

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("done {task.fields[done]} failed {task.fields[failed]}"),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bars:
        progress = batch_progress(s3, location, batch_id)
        task = bars.add_task(batch_id, total=progress.total, completed=progress.finished,
                             done=progress.done, failed=progress.failed)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not progress.complete and (deadline is None or time.monotonic() < deadline):
            time.sleep(interval)
            progress = batch_progress(s3, location, batch_id)
            bars.update(task, total=progress.total, completed=progress.finished,
                        done=progress.done, failed=progress.failed)
    return progress


@app.command()
def redrive(
    queue_url: QueueOpt = None,
    max_messages: Annotated[int | None, typer.Option(
        "--max", min=1, help="Move at most this many (default: the DLQ's depth now).")
    ] = None,
    timeout: Annotated[float, typer.Option(
        help="Stop after this many seconds.", min=1)] = 300.0,
    move_task: Annotated[bool, typer.Option(
        "--move-task", help="Use SQS's StartMessageMoveTask: server-side and fast, but it "
        "moves everything, bodies that are not jobs included.")] = False,
) -> None:
    """Move jobs from the dead-letter queue back to the job queue, each at most once.

    Bodies that are not jobs stay in the DLQ and are listed. Bounded by --max and
    --timeout, so it ends even while workers send failing messages back.
    """
    from common import aws
    from producer.redrive import redrive as move

    with clear_errors():
        settings = _settings(queue_url=queue_url)
        if not settings.queue_url:
            raise InvalidJob("no queue URL: pass --queue-url or set IMG2IMG_QUEUE_URL")
        report = move(aws.sqs_client(), settings.queue_url, max_messages=max_messages,
                      timeout=timeout, use_move_task=move_task,
                      probe=aws.sqs_client(max_attempts=1))
    if report.method == "move-task":
        typer.echo(f"started SQS move task {report.task_handle}: about {report.moved} "
                   f"messages from {report.dlq_url} to {settings.queue_url}")
        return
    stopped = {"empty": "the DLQ is empty", "limit": "--max reached",
               "all": "every message that was in the DLQ at the start was handled",
               "time": f"time limit ({timeout:.0f} s) reached"}.get(report.stopped, "")
    typer.echo(f"moved {report.moved} messages from {report.dlq_url} to "
               f"{settings.queue_url}; {stopped}")
    if report.failed:
        typer.echo(f"{report.failed} failed to send and stay in the DLQ", err=True)
    if report.bounced:
        typer.echo(f"{report.bounced} moved by this run came back to the DLQ already and "
                   "stay there (failing again: look at the workers' logs)", err=True)
    if report.not_jobs:
        typer.echo(f"{report.not_jobs} bodies that are not jobs stay in the DLQ:", err=True)
        for reason in report.reasons:
            typer.echo(f"  {reason}", err=True)
    if report.failed:
        raise typer.Exit(1)


@app.command()
def plan(
    images: Annotated[int, typer.Option(help="Images to process.", min=1)],
    rate: Annotated[float | None, typer.Option(
        help="They arrive at this many per second (default: all at once).", min=0.001)
    ] = None,
    seconds_per_image: Annotated[float | None, typer.Option(
        help="GPU seconds per image in a full batch (default: an assumption, shown).",
        min=0.001)] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="IMG2IMG_MAX_BATCH_SIZE (default: the worker's).", min=1, max=64)] = None,
    max_tasks: Annotated[int | None, typer.Option(
        help="The stack's maxTasks (default: the stack's).", min=1)] = None,
    backlog_per_task: Annotated[int | None, typer.Option(
        help="The stack's backlogPerTask (default: the stack's).", min=1)] = None,
    instance_type: Annotated[str | None, typer.Option(
        help="A g5/g6/g6e type (default: the stack's first).")] = None,
    spot: Annotated[bool, typer.Option("--spot", help="Spot capacity, with reclaims.")
                    ] = False,
    price_per_hour: Annotated[float | None, typer.Option(
        help="Your price per instance-hour for the chosen capacity (default: the "
        "project's dated list prices).", min=0)] = None,
    interruptions_per_hour: Annotated[float | None, typer.Option(
        help="Spot reclaims per instance-hour (default with --spot: an assumption).",
        min=0)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")
                       ] = False,
) -> None:
    """Drain time, latency, GPU-hours and cost: the stack's scaling policy simulated."""
    from capacity_planner.plan import PlanRequest, make_plan

    try:
        made = make_plan(PlanRequest(
            images=images, rate_per_second=rate, seconds_per_image=seconds_per_image,
            batch_size=batch_size, max_tasks=max_tasks, backlog_per_task=backlog_per_task,
            instance_type=instance_type, spot=spot, price_per_hour=price_per_hour,
            interruptions_per_hour=interruptions_per_hour))
    except ValueError as exc:  # a setting the stack or the model refuses
        raise fail(str(exc)) from None
    typer.echo(json.dumps(made.to_dict(), indent=2) if as_json else made.text())


@app.command()
def schema() -> None:
    """Print the job message's JSON Schema (for other producers)."""
    from contract.job import job_json_schema

    typer.echo(json.dumps(job_json_schema(), indent=2))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
