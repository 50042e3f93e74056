"""``img2img-producer fetch``, ``gallery`` and ``plan``: a batch's results, and what a
workload would take."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from common.cli import clear_errors, fail, progress_bars
from contract.locations import S3_SCHEME, parse_s3_uri
from producer.cli_base import (
    BatchIdOpt,
    ConcurrencyOpt,
    LogLevel,
    OutputOpt,
    app,
    report_downloads,
    settings_from,
)


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
        settings = settings_from(concurrency=concurrency)
        location = require_output(output_location(output, settings.bucket,
                                                  settings.output_prefix))
        s3 = aws.s3_client(max_pool_connections=settings.concurrency + 4)
        with progress_bars() as bars:
            summary = fetch_batch(s3, location, batch_id, dest,
                                  concurrency=settings.concurrency, progress=bars)
    typer.echo(summary.line())
    report_downloads(summary.report.failed)
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
        settings = settings_from(concurrency=concurrency)
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
    report_downloads(summary.downloads.failed)
    if summary.unreadable:
        typer.echo(f"  {summary.unreadable} record(s) could not be read and are left out",
                   err=True)
    if summary.downloads.failed:
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
    warm_pool_size: Annotated[int | None, typer.Option(
        help="The stack's warmPoolSize: stopped instances kept ready (default: the "
        "stack's).", min=0)] = None,
    start: Annotated[bool, typer.Option(
        "--start/--no-start", help="Whether enqueue starts the fleet itself (its "
        "default) or waits for the start alarm.")] = True,
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
            interruptions_per_hour=interruptions_per_hour, warm_pool_size=warm_pool_size,
            producer_start=start))
    except ValueError as exc:  # a setting the stack or the model refuses
        raise fail(str(exc)) from None
    typer.echo(json.dumps(made.to_dict(), indent=2) if as_json else made.text())
