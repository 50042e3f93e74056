"""What every ``img2img-producer`` command shares: the app, its global options and
settings, and the options several commands take."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from common import cli_options as opt
from common.cli import HelpGroup, log_level_or

app = typer.Typer(no_args_is_help=True, context_settings=opt.CONTEXT_SETTINGS, cls=HelpGroup,
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
           quiet: opt.Quiet = False, verbose: opt.Verbose = 0,
           region: opt.Region = None, profile: opt.Profile = None,
           endpoint_url: opt.EndpointUrl = None,
           version: opt.Version = False) -> None:
    """Enqueue img2img jobs on SQS and follow them."""
    _log_at(log_level_or(log_level))


def settings_from(**overrides: Any) -> Any:
    from common.aws import default_region_from_queue
    from contract.settings import load_settings
    from producer.settings import ProducerSettings

    settings = load_settings(ProducerSettings,
                             **{k: v for k, v in overrides.items() if v is not None})
    default_region_from_queue(settings.queue_url)
    return settings


BatchIdOpt = Annotated[str, typer.Option(help="The batch (enqueue prints its id).")]
AsJson = Annotated[bool, typer.Option(
    "--json", help="Print one JSON object on stdout instead of lines (no progress bars).")]


def echo_json(value: Any) -> None:
    """One JSON document on stdout, for scripts."""
    import json

    typer.echo(json.dumps(value, indent=2, default=str))
OutputOpt = Annotated[str | None, typer.Option(
    help="The batch's output prefix, s3://bucket/prefix/. Default: IMG2IMG_BUCKET + "
    "IMG2IMG_OUTPUT_PREFIX.")]
ConcurrencyOpt = Annotated[int | None, typer.Option(
    help="Parallel S3 calls. Default: IMG2IMG_CONCURRENCY (8).", min=1, max=64)]


def report_downloads(failed: list[str], limit: int = 20) -> None:
    for failure in failed[:limit]:
        typer.echo(f"  not downloaded: {failure}", err=True)
    if len(failed) > limit:
        typer.echo(f"  ... and {len(failed) - limit} more not downloaded", err=True)
