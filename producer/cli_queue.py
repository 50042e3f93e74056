"""``img2img-producer redrive`` and ``cancel``: the dead-letter queue and cancel orders."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer

from common.cli import clear_errors, plural
from contract.errors import InvalidJob
from producer.cli_base import (
    AsJson,
    LogLevel,
    QueueOpt,
    app,
    echo_json,
    settings_from,
)


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
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say how many messages each DLQ holds; move nothing.")] = False,
    as_json: AsJson = False,
    log_level: LogLevel = None,
) -> None:
    """Move jobs from the dead-letter queue back to the job queue, each at most once.

    Bodies that are not jobs stay in the DLQ and are listed. Bounded by --max and
    --timeout, so it ends even while workers send failing messages back.
    """
    from common import aws
    from producer.redrive import redrive as move

    with clear_errors():
        settings = settings_from(queue_url=queue_url)
        if not settings.queue_url:
            raise InvalidJob("no queue URL: pass --queue-url or set IMG2IMG_QUEUE_URL")
        urls = [u for u in (settings.priority_queue_url, settings.queue_url) if u]
        reports = [(url, move(aws.sqs_client(), url, max_messages=max_messages,
                              timeout=timeout, use_move_task=move_task,
                              probe=aws.sqs_client(max_attempts=1), dry_run=dry_run))
                   for url in urls]
    if as_json:
        echo_json([{"queue_url": url, **asdict(report)} for url, report in reports])
        raise typer.Exit(1 if any(report.failed for _, report in reports) else 0)
    failed = False
    for url, report in reports:
        _print_redrive(url, report, timeout)
        failed = failed or report.failed > 0
    if failed:
        raise typer.Exit(1)


def _print_redrive(queue_url: str, report: Any, timeout: float) -> None:
    if report.method == "dry-run":
        typer.echo(f"dry run: {report.dlq_url} holds about {report.moved} message(s) "
                   f"that redrive would move to {queue_url} (bodies that are not jobs "
                   "stay); nothing was moved")
        return
    if report.method == "move-task":
        typer.echo(f"started SQS move task {report.task_handle}: about "
                   f"{plural(report.moved, 'message')} from {report.dlq_url} to {queue_url}")
        return
    stopped = {"empty": "the DLQ is empty", "limit": "--max reached",
               "all": "every message that was in the DLQ at the start was handled",
               "time": f"time limit ({timeout:.0f} s) reached"}.get(report.stopped, "")
    typer.echo(f"moved {plural(report.moved, 'message')} from {report.dlq_url} to "
               f"{queue_url}; "
               f"{stopped}")
    if report.failed:
        typer.echo(f"{report.failed} failed to send and stay in the DLQ", err=True)
    if report.bounced:
        typer.echo(f"{report.bounced} moved by this run came back to the DLQ already and "
                   "stay there (failing again: look at the workers' logs)", err=True)
    if report.not_jobs:
        typer.echo(f"{plural(report.not_jobs, 'body', 'bodies')} that "
                   f"{'is not a job stays' if report.not_jobs == 1 else 'are not jobs stay'} "
                   "in the DLQ:", err=True)
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
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what would be cancelled; write nothing.")] = False,
    as_json: AsJson = False,
    log_level: LogLevel = None,
) -> None:
    """Cancel a batch (or some of its jobs): jobs not yet started end as cancelled."""
    from common import aws
    from producer.cancel import cancel as write_cancel
    from producer.output_prefix import output_location, require_output

    with clear_errors():
        settings = settings_from()
        location = require_output(output_location(output, settings.bucket,
                                                  settings.output_prefix))
        result = write_cancel(aws.s3_client(), location, batch_id, job_ids=job_id,
                              reason=reason, dry_run=dry_run)
    if as_json:
        echo_json(result.to_dict(batch_id))
        return
    if result.order is None:
        typer.echo(f"batch {batch_id} has already ended ({result.finished} of "
                   f"{result.total} jobs): nothing to cancel")
        return
    what = "every job" if result.order.all_jobs else f"{len(result.order.job_ids)} job(s)"
    will = "would end (dry run: nothing written)" if result.dry_run else "will end"
    typer.echo(f"batch {batch_id}: {what} not yet started {will} as cancelled "
               f"({result.finished} of {result.total} ended already)")
