"""The flags both CLIs take, declared once so their names, help and defaults (those of
GenerationParams) cannot drift apart."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata
from typing import Annotated, get_args

import typer

from contract.job import GenerationParams, OutputFormat
from contract.job import Scheduler as SchedulerName

DISTRIBUTION = "img2img-fleet"

_DEFAULTS = {name: field.default for name, field in GenerationParams.model_fields.items()}

Models = Annotated[list[str] | None, typer.Option(
    "--model", "-m", help="Model alias, hub id, folder or s3:// prefix; repeat for a random "
    "pick per image. Default: IMG2IMG_DEFAULT_MODELS.")]
Prompts = Annotated[list[str] | None, typer.Option(
    "--prompt", "-p", help="Prompt; repeat for a random pick per image. Default: "
    "IMG2IMG_DEFAULT_PROMPTS.")]
NegativePrompt = Annotated[str, typer.Option(
    help="What the images should not show (ignored at guidance scale 1 or below).")]
Strength = Annotated[float, typer.Option(help="How much to change the image, (0, 1].")]
_FAMILY = " Default: the model family's (img2img-producer schema --families)."
Steps = Annotated[int | None, typer.Option(
    help="Scheduler steps; int(steps * strength) run." + _FAMILY)]
GuidanceScale = Annotated[float | None, typer.Option(
    help="Classifier-free guidance, 0..30: how closely to follow the prompt." + _FAMILY)]
Seed = Annotated[int | None, typer.Option(
    help="Seed for every image and for the model/prompt picks (default: per image, "
    "derived from its job id).")]
MaxSide = Annotated[int | None, typer.Option(
    help="Long side the model sees (multiple of 8)." + _FAMILY)]
KeepSize = Annotated[bool, typer.Option(
    "--keep-size/--no-keep-size", help="Resize outputs back to the input's size.")]
Format = Annotated[OutputFormat, typer.Option("--format", help="Output image format.")]
Scheduler = Annotated[SchedulerName | None, typer.Option(
    metavar="NAME", help="Denoising scheduler: " + ", ".join(get_args(SchedulerName))
    + " ('model' keeps the one the checkpoint ships with)." + _FAMILY)]
Loras = Annotated[list[str] | None, typer.Option(
    "--lora", help="LoRA adapter as REF[:SCALE] (hub id, s3:// or a path; scale 1 by "
    "default); repeat for up to 4. Refs must match IMG2IMG_ALLOWED_LORAS.")]


def lora_params(specs: list[str] | None) -> dict[str, list[dict[str, object]]]:
    """``{"loras": [...]}`` for GenerationParams from ``--lora`` specs; ``{}`` without
    any, so parameters (and the ids derived from them) stay as they were."""
    from contract.loras import parse_lora_spec

    if not specs:
        return {}
    return {"loras": [parse_lora_spec(spec).model_dump() for spec in specs]}


# What the command lines call each job field, so an error names the flag that was typed.
FLAG_NAMES = {name: "--" + name.replace("_", "-") for name in _DEFAULTS} | {
    "output_format": "--format", "loras": "--lora"}

NEGATIVE_PROMPT: str = _DEFAULTS["negative_prompt"]
STRENGTH: float = _DEFAULTS["strength"]
STEPS: int | None = _DEFAULTS["steps"]
GUIDANCE_SCALE: float | None = _DEFAULTS["guidance_scale"]
MAX_SIDE: int | None = _DEFAULTS["max_side"]
KEEP_SIZE: bool = _DEFAULTS["keep_size"]
FORMAT: OutputFormat = _DEFAULTS["output_format"]
SCHEDULER: SchedulerName | None = _DEFAULTS["scheduler"]


def package_version() -> str:
    """The installed distribution's version (pyproject's), 'unknown' when not installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"{DISTRIBUTION} {package_version()}")
        raise typer.Exit()


Version = Annotated[bool, typer.Option(
    "--version", help="Print the version and exit.", callback=_print_version,
    is_eager=True, expose_value=False)]


# Both apps: -h as well as --help, on every command.
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _into_environment(variable: str) -> Callable[[str | None], str | None]:
    """A flag that sets the AWS variable boto3 reads, before any client is made."""
    def callback(value: str | None) -> str | None:
        if value:
            os.environ[variable] = value
        return value
    return callback


Region = Annotated[str | None, typer.Option(
    "--region", metavar="REGION", callback=_into_environment("AWS_REGION"),
    expose_value=False, help="AWS region (as AWS_REGION). Default: AWS_REGION, the "
    "profile's, else the one in the queue URL.")]
Profile = Annotated[str | None, typer.Option(
    "--profile", metavar="NAME", callback=_into_environment("AWS_PROFILE"),
    expose_value=False, help="AWS profile (as AWS_PROFILE).")]
EndpointUrl = Annotated[str | None, typer.Option(
    "--endpoint-url", metavar="URL", callback=_into_environment("AWS_ENDPOINT_URL"),
    expose_value=False, help="S3 and SQS endpoint, e.g. a local emulator (as "
    "AWS_ENDPOINT_URL).")]


def _quiet(value: bool) -> bool:
    if value:
        from common.cli import set_quiet, set_verbosity

        set_quiet(True)
        set_verbosity(-1)
    return value


def _verbose(value: int) -> int:
    if value:
        from common.cli import set_verbosity

        set_verbosity(value)
    return value


Quiet = Annotated[bool, typer.Option(
    "--quiet", "-q", callback=_quiet, expose_value=False,
    help="No progress bars; log errors only.")]
Verbose = Annotated[int, typer.Option(
    "--verbose", "-v", count=True, callback=_verbose, expose_value=False,
    help="Log more: -v info, -vv debug.")]
