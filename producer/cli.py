"""``img2img-producer``: enqueue jobs, watch a batch, redrive the DLQ, print the schema."""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from common import cli_options as opt
from common.cli import clear_errors, fail, progress_bars, run_app
from contract.errors import InvalidJob
from contract.locations import S3_SCHEME, parse_s3_uri

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Enqueue img2img jobs on SQS and follow them.")
log = logging.getLogger("producer")

QueueOpt = Annotated[str | None, typer.Option(
    help="The job queue's URL. Default: IMG2IMG_QUEUE_URL.")]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_at(level: str | None) -> str | None:
    """Configure logging on stderr at ``level`` (None: leave it as it is)."""
    if level is None:
        return None
    if level.upper() not in LOG_LEVELS:
        raise typer.BadParameter(f"{level!r} is not one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level.upper())
    return level


# Each command takes --log-level too (after its name); it takes effect as it is parsed,
# so the commands never read it.
LogLevel = Annotated[str | None, typer.Option(
    "--log-level", help="Python log level (DEBUG, INFO, WARNING, ...), on stderr.",
    callback=_log_at, expose_value=False)]


@app.callback()
def _group(log_level: Annotated[str, typer.Option(
               help="Python log level (DEBUG, INFO, WARNING, ...), on stderr; also "
               "accepted after the command.")] = "WARNING",
           version: opt.Version = False) -> None:
    """Enqueue img2img jobs on SQS and follow them."""
    _log_at(log_level)


class Priority(str, Enum):
    NORMAL = "normal"
    HIGH = "high"


def _queue_for(priority: Priority, settings: Any) -> str | None:
    if priority is Priority.NORMAL:
        return settings.queue_url
    if not settings.priority_queue_url:
        raise InvalidJob("--priority high needs IMG2IMG_PRIORITY_QUEUE_URL (the high-"
                         "priority queue)")
    return settings.priority_queue_url


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
    priority: Annotated[Priority, typer.Option(
        help="high: the jobs go to IMG2IMG_PRIORITY_QUEUE_URL, which workers ask first.")
    ] = Priority.NORMAL,
    ttl: Annotated[float | None, typer.Option(
        "--ttl", min=1, help="Seconds the jobs stay worth running: one received later ends "
        "as expired without running.")] = None,
    timeout: Annotated[int | None, typer.Option(
        "--timeout", min=1, help="Seconds a generation may run; a longer one is stopped "
        "and recorded as failed (Timeout), not retried.")] = None,
    callback_url: Annotated[str | None, typer.Option(
        help="POST each job's end event here (the workers' IMG2IMG_ALLOWED_CALLBACKS must "
        "admit it).")] = None,
    list_page_size: Annotated[int, typer.Option(hidden=True, min=1, max=1000)] = 1000,
    log_level: LogLevel = None,
) -> None:
    """Turn images into jobs on the queue: 10 per SendMessageBatch, in parallel."""
    from common import aws
    from producer.enqueue import EnqueueOptions, Enqueuer, no_progress
    from producer.planning import Defaults, JobControls

    with clear_errors():
        settings = _settings(queue_url=queue_url, bucket=bucket, concurrency=concurrency)
        defaults = Defaults(
            models=list(model or settings.default_models),
            prompts=list(prompt or settings.default_prompts),
            common=dict(negative_prompt=negative_prompt, strength=strength, steps=steps,
                        guidance_scale=guidance_scale, seed=seed, max_side=max_side,
                        output_format=output_format.value, keep_size=keep_size,
                        scheduler=scheduler),
            controls=JobControls.of(ttl_seconds=ttl, timeout_seconds=timeout,
                                    callback_url=callback_url),
            allowed_models=settings.allowed_models)
        options = EnqueueOptions(
            source=source, jobs_file=jobs, bucket=settings.bucket,
            upload_prefix=upload_prefix or settings.upload_prefix, output=output,
            default_output_prefix=settings.output_prefix, batch_id=batch_id,
            queue_url=_queue_for(priority, settings), dry_run=dry_run,
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


@app.command()
def status(
    batch_id: Annotated[str | None, typer.Option(
        help="Show this batch's progress. Without it: the queue and the recent batches.")
    ] = None,
    output: Annotated[str | None, typer.Option(
        help="The output prefix, s3://bucket/prefix/. Default: IMG2IMG_BUCKET + "
        "IMG2IMG_OUTPUT_PREFIX.")] = None,
    queue_url: QueueOpt = None,
    watch: Annotated[bool, typer.Option(
        "--watch", help="Show a live progress bar until every job of --batch-id is done or "
        "failed (exit 0; failures are counted), or without --batch-id until the queue is "
        "drained. Exit 1 when it stops short: --timeout, or jobs left only in the DLQ.")
    ] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --watch.",
                                            min=0.05)] = 5.0,
    failures: Annotated[bool, typer.Option(
        "--failures", help="List the failed jobs' errors (reads their result records).")
    ] = False,
    timeout: Annotated[float | None, typer.Option(
        help="Give up watching after this many seconds (exit 1).", min=0)] = None,
    dlq_grace: Annotated[float, typer.Option(
        help="With --watch: stop (exit 1) once the batch is unfinished, the queue empty "
        "and the DLQ not, for this many seconds (SQS's counts lag).", min=0)] = 60.0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object (queue, dlq, batch or batches, failures) "
        "instead of lines.")] = False,
    limit: Annotated[int, typer.Option(
        help="Batches listed without --batch-id, newest first.", min=1)] = 10,
    log_level: LogLevel = None,
) -> None:
    """Queue depth (visible, in flight, delayed, DLQ) and a batch's done/failed/rate/ETA."""
    from common import aws
    from producer.output_prefix import output_location
    from producer.status_report import StatusRequest, collect_status
    from producer.watch import batch_bar, queue_bar

    with clear_errors():
        settings = _settings(queue_url=queue_url)
        request = StatusRequest(
            batch_id=batch_id, output=output_location(output, settings.bucket,
                                                      settings.output_prefix),
            queue_url=settings.queue_url, priority_queue_url=settings.priority_queue_url,
            watch=watch, failures=failures, interval=interval,
            timeout=timeout, dlq_grace=dlq_grace, limit=limit)
        report = collect_status(request, make_s3=aws.s3_client, make_sqs=aws.sqs_client,
                                batch_display=batch_bar, queue_display=queue_bar)
    if as_json:
        typer.echo(report.to_json())
    else:
        for line in report.lines():
            typer.echo(line)
    for problem in report.problems():
        typer.echo(problem, err=True)
    raise typer.Exit(report.exit_code)


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
    log_level: LogLevel = None,
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
        urls = [u for u in (settings.priority_queue_url, settings.queue_url) if u]
        reports = [(url, move(aws.sqs_client(), url, max_messages=max_messages,
                              timeout=timeout, use_move_task=move_task,
                              probe=aws.sqs_client(max_attempts=1))) for url in urls]
    failed = False
    for url, report in reports:
        _print_redrive(url, report, timeout)
        failed = failed or report.failed > 0
    if failed:
        raise typer.Exit(1)


def _print_redrive(queue_url: str, report: Any, timeout: float) -> None:
    if report.method == "move-task":
        typer.echo(f"started SQS move task {report.task_handle}: about {report.moved} "
                   f"messages from {report.dlq_url} to {queue_url}")
        return
    stopped = {"empty": "the DLQ is empty", "limit": "--max reached",
               "all": "every message that was in the DLQ at the start was handled",
               "time": f"time limit ({timeout:.0f} s) reached"}.get(report.stopped, "")
    typer.echo(f"moved {report.moved} messages from {report.dlq_url} to {queue_url}; "
               f"{stopped}")
    if report.failed:
        typer.echo(f"{report.failed} failed to send and stay in the DLQ", err=True)
    if report.bounced:
        typer.echo(f"{report.bounced} moved by this run came back to the DLQ already and "
                   "stay there (failing again: look at the workers' logs)", err=True)
    if report.not_jobs:
        typer.echo(f"{report.not_jobs} bodies that are not jobs stay in the DLQ:", err=True)
        for reason in report.reasons:
            typer.echo(f"  {reason}", err=True)


@app.command()
def cancel(
    batch_id: Annotated[str, typer.Option(help="The batch to cancel.")],
    output: Annotated[str | None, typer.Option(
        help="The batch's output prefix, s3://bucket/prefix/. Default: IMG2IMG_BUCKET + "
        "IMG2IMG_OUTPUT_PREFIX.")] = None,
    job_id: Annotated[list[str] | None, typer.Option(
        "--job-id", help="Cancel only this job of the batch (repeatable).")] = None,
    reason: Annotated[str, typer.Option(help="Recorded in each cancelled job's record.")
                      ] = "cancelled",
    log_level: LogLevel = None,
) -> None:
    """Cancel a batch (or some of its jobs): jobs not yet started end as cancelled."""
    from common import aws
    from producer.cancel import cancel as write_cancel
    from producer.output_prefix import output_location, require_output

    with clear_errors():
        settings = _settings()
        location = require_output(output_location(output, settings.bucket,
                                                  settings.output_prefix))
        result = write_cancel(aws.s3_client(), location, batch_id, job_ids=job_id,
                              reason=reason)
    if result.order is None:
        typer.echo(f"batch {batch_id} has already ended ({result.finished} of "
                   f"{result.total} jobs): nothing to cancel")
        return
    what = "every job" if result.order.all_jobs else f"{len(result.order.job_ids)} job(s)"
    typer.echo(f"batch {batch_id}: {what} not yet started will end as cancelled "
               f"({result.finished} of {result.total} ended already)")


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
    log_level: LogLevel = None,
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
def schema(log_level: LogLevel = None) -> None:
    """Print the job message's JSON Schema (for other producers)."""
    from contract.job import job_json_schema

    typer.echo(json.dumps(job_json_schema(), indent=2))


# -- a batch's results: fetch and gallery ----------------------------------------------

BatchIdOpt = Annotated[str, typer.Option(help="The batch (enqueue prints its id).")]
OutputOpt = Annotated[str | None, typer.Option(
    help="The batch's output prefix, s3://bucket/prefix/. Default: IMG2IMG_BUCKET + "
    "IMG2IMG_OUTPUT_PREFIX.")]
ConcurrencyOpt = Annotated[int | None, typer.Option(
    help="Parallel S3 calls. Default: IMG2IMG_CONCURRENCY (8).", min=1, max=64)]


@app.command()
def fetch(
    dest: Annotated[Path, typer.Argument(help="Local folder for the outputs and records.")],
    batch_id: BatchIdOpt,
    output: OutputOpt = None,
    concurrency: ConcurrencyOpt = None,
    log_level: LogLevel = None,
) -> None:
    """Download a batch's outputs and result records, in parallel; files already there
    with the same size and ETag are skipped, so a second run fetches only what is new."""
    from common import aws
    from producer.fetch import fetch_batch
    from producer.output_prefix import output_location, require_output

    with clear_errors():
        settings = _settings(concurrency=concurrency)
        location = require_output(output_location(output, settings.bucket,
                                                  settings.output_prefix))
        s3 = aws.s3_client(max_pool_connections=settings.concurrency + 4)
        with progress_bars() as bars:
            summary = fetch_batch(s3, location, batch_id, dest,
                                  concurrency=settings.concurrency, progress=bars)
    typer.echo(summary.line())
    _report_downloads(summary.report.failed)
    if summary.no_record:
        typer.echo(f"  {len(summary.no_record)} finished job(s) have no result record "
                   f"under {location.uri}", err=True)
    if summary.report.failed:
        raise typer.Exit(1)


@app.command()
def gallery(
    batch_id: BatchIdOpt,
    to: Annotated[str, typer.Option(
        help="A local folder (the pages plus copies of the inputs and outputs) or "
        "s3://bucket/prefix/ (the pages only, linking the images by presigned URL).")],
    output: OutputOpt = None,
    expires: Annotated[int, typer.Option(
        help="With --to s3://: seconds the presigned links work, at most 604800 (7 days; "
        "less with temporary credentials).")] = 7 * 24 * 3600,
    page_size: Annotated[int, typer.Option(help="Jobs per page.", min=1)] = 100,
    concurrency: ConcurrencyOpt = None,
    log_level: LogLevel = None,
) -> None:
    """An HTML gallery of a batch: each input beside its output, failures first."""
    from common import aws
    from producer.gallery_export import gallery_to_bucket, gallery_to_folder
    from producer.output_prefix import output_location, require_output

    with clear_errors():
        settings = _settings(concurrency=concurrency)
        location = require_output(output_location(output, settings.bucket,
                                                  settings.output_prefix))
        s3 = aws.s3_client(max_pool_connections=settings.concurrency + 4)
        if to.startswith(S3_SCHEME):
            from botocore.config import Config

            presigner = aws.make_session().client("s3", config=Config(signature_version="s3v4"))
            summary = gallery_to_bucket(s3, location, batch_id, parse_s3_uri(to, prefix=True),
                                        presigner=presigner, concurrency=settings.concurrency,
                                        expires=expires, page_size=page_size)
        else:
            with progress_bars() as bars:
                summary = gallery_to_folder(s3, location, batch_id, Path(to),
                                            concurrency=settings.concurrency, progress=bars,
                                            page_size=page_size)
    typer.echo(summary.line())
    typer.echo(f"open: {summary.index}")
    _report_downloads(summary.downloads.failed)
    if summary.unreadable:
        typer.echo(f"  {summary.unreadable} record(s) could not be read and are left out",
                   err=True)
    if summary.downloads.failed:
        raise typer.Exit(1)


def _report_downloads(failed: list[str], limit: int = 20) -> None:
    for failure in failed[:limit]:
        typer.echo(f"  not downloaded: {failure}", err=True)
    if len(failed) > limit:
        typer.echo(f"  ... and {len(failed) - limit} more not downloaded", err=True)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
