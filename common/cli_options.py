"""The flags both CLIs take, declared once so their names, help and defaults (those of
GenerationParams) cannot drift apart."""

from __future__ import annotations

from importlib import metadata
from typing import Annotated

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
    help="Denoising scheduler; 'model' keeps the one the checkpoint ships with." + _FAMILY)]

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
