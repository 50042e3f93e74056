"""``img2img-producer``: enqueue jobs, follow them (status), print the schema; the other
commands live in producer/cli_queue.py and producer/cli_results.py."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from common import cli_options as opt
from common.cli import clear_errors, progress_bars, run_app
from contract.errors import InvalidJob
from producer.cli_base import AsJson, LogLevel, QueueOpt, app, echo_json, settings_from


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
    lora: opt.Loras = None,
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
    start: Annotated[bool | None, typer.Option(
        "--start/--no-start", help="After sending, raise the worker service (and its GPU "
        "group) to what the backlog needs: never down, a no-op when there is capacity. "
        "Default: on when IMG2IMG_CLUSTER and IMG2IMG_SERVICE are set.")] = None,
    list_page_size: Annotated[int, typer.Option(hidden=True, min=1, max=1000)] = 1000,
    as_json: AsJson = False,
    log_level: LogLevel = None,
) -> None:
    """Turn images into jobs on the queue: 10 per SendMessageBatch, in parallel."""
    from common import aws
    from producer.enqueue import EnqueueOptions, Enqueuer, no_progress
    from producer.planning import Defaults, JobControls

    with clear_errors():
        settings = settings_from(queue_url=queue_url, bucket=bucket, concurrency=concurrency)
        target = _start_target(settings, start)
        defaults = Defaults(
            models=list(model or settings.default_models),
            prompts=list(prompt or settings.default_prompts),
            common=dict(negative_prompt=negative_prompt, strength=strength, steps=steps,
                        guidance_scale=guidance_scale, seed=seed, max_side=max_side,
                        output_format=output_format.value, keep_size=keep_size,
                        scheduler=scheduler, **opt.lora_params(lora)),
            controls=JobControls.of(ttl_seconds=ttl, timeout_seconds=timeout,
                                    callback_url=callback_url),
            allowed_models=settings.allowed_models, allowed_loras=settings.allowed_loras)
        options = EnqueueOptions(
            source=source, jobs_file=jobs, bucket=settings.bucket,
            upload_prefix=upload_prefix or settings.upload_prefix, output=output,
            default_output_prefix=settings.output_prefix, batch_id=batch_id,
            queue_url=_queue_for(priority, settings), dry_run=dry_run,
            concurrency=settings.concurrency, page_size=list_page_size)
        pool = settings.concurrency + 4
        s3 = aws.s3_client(max_pool_connections=pool)
        sqs = None if dry_run else aws.sqs_client(max_pool_connections=pool)
        if dry_run or as_json:
            summary = Enqueuer(s3, sqs, options, defaults, no_progress).run()
        else:
            with progress_bars() as bars:
                summary = Enqueuer(s3, sqs, options, defaults, bars).run()
    if as_json:
        if target is not None and summary.enqueued and not dry_run:
            _start_workers(target, options.queue_url, summary.enqueued, err=True)
        echo_json(_enqueue_facts(summary, dry_run))
        if summary.failed:
            raise typer.Exit(1)
        return
    if dry_run:
        for job in summary.jobs:
            typer.echo(job.to_json())
        typer.echo(f"dry run, nothing sent: {summary.line()}", err=True)
        return
    typer.echo(summary.line())
    if target is not None and summary.enqueued:
        _start_workers(target, options.queue_url, summary.enqueued)
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


def _enqueue_facts(summary: Any, dry_run: bool) -> dict[str, Any]:
    """``enqueue --json``: the batch and its counts (with --dry-run, the jobs too)."""
    return {
        "batch_id": summary.batch_id, "source": summary.source,
        "output": summary.output.uri, "dry_run": dry_run,
        "manifest": summary.manifest.uri if summary.manifest else None,
        "found": summary.found, "enqueued": summary.enqueued, "skipped": summary.skipped,
        "skipped_reasons": summary.skipped_reasons, "uploaded": summary.uploaded,
        "unchanged": summary.unchanged,
        "failed": [{"job_id": f.id, "code": f.code, "message": f.message}
                   for f in summary.failed],
        **({"jobs": [json.loads(job.to_json()) for job in summary.jobs]} if dry_run else {}),
    }


def _start_target(settings: Any, start: bool | None) -> Any:
    """The fleet to start after sending, or None (``--no-start``, or not configured)."""
    from producer.fleet_start import FleetTarget

    named = bool(settings.cluster and settings.service)
    if start is False or (start is None and not named):
        return None
    if not named:
        raise InvalidJob("--start needs IMG2IMG_CLUSTER and IMG2IMG_SERVICE (the stack's "
                         "ClusterName and ServiceName outputs); IMG2IMG_GPU_GROUP "
                         "(AutoScalingGroupName) starts its instances too")
    return FleetTarget(cluster=settings.cluster, service=settings.service,
                       group=settings.gpu_group, max_tasks=settings.max_tasks,
                       backlog_per_task=settings.backlog_per_task)


def _start_workers(target: Any, queue_url: str, sent: int, *, err: bool = False) -> None:
    """The start call; a failure leaves the jobs queued for the start alarm. ``err``:
    its line goes to stderr (``--json`` keeps stdout for the JSON)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from common import aws
    from producer.fleet_start import queue_backlog, start_fleet

    try:
        backlog = max(sent, queue_backlog(aws.sqs_client(), queue_url))
        outcome = start_fleet(aws.client("ecs"),
                              aws.client("autoscaling") if target.group else None,
                              target, backlog)
    except (BotoCoreError, ClientError, InvalidJob) as exc:
        typer.echo(f"start: not done ({exc}); the jobs are queued and the start alarm "
                   "starts the workers from its next datapoint", err=True)
        return
    typer.echo(outcome.line(), err=err)


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
        settings = settings_from(queue_url=queue_url)
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
def schema(
    families: Annotated[bool, typer.Option(
        "--families", help="Print the model families and their defaults as a table.")
    ] = False,
    log_level: LogLevel = None,
) -> None:
    """Print the job message's JSON Schema (for other producers); the model families and
    the defaults a job's unset parameters take from them are under x-model-families."""
    from contract.job import job_json_schema
    from contract.model_profiles import families_table

    table = families_table()
    if families:
        for line in format_families(table):
            typer.echo(line)
        return
    typer.echo(json.dumps({**job_json_schema(), "x-model-families": table}, indent=2))


def format_families(table: list[dict]) -> list[str]:
    """One line per family: its defaults, whether it takes negative prompts, aliases."""
    header = ("family", "max_side", "steps", "guidance", "scheduler", "negative", "aliases")
    rows = [(str(f["family"]), str(f["max_side"]), str(f["steps"]), str(f["guidance_scale"]),
             str(f["scheduler"]), "guidance>1" if f["negative_prompt"] else "no",
             ",".join(f["aliases"]) or "-") for f in table]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]


def main() -> None:
    run_app(app)


# The other commands register themselves on the same app when imported.
from producer import cli_queue, cli_results  # noqa: E402, F401

if __name__ == "__main__":
    main()
