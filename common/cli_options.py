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
Steps = Annotated[int, typer.Option(help="Scheduler steps; int(steps * strength) run.")]
GuidanceScale = Annotated[float, typer.Option(
    help="Classifier-free guidance, 0..30: how closely to follow the prompt.")]
Seed = Annotated[int | None, typer.Option(
    help="Seed for every image and for the model/prompt picks (default: per image, "
    "derived from its job id).")]
MaxSide = Annotated[int, typer.Option(help="Long side the model sees (multiple of 8).")]
KeepSize = Annotated[bool, typer.Option(
    "--keep-size/--no-keep-size", help="Resize outputs back to the input's size.")]
Format = Annotated[OutputFormat, typer.Option("--format", help="Output image format.")]
Scheduler = Annotated[SchedulerName, typer.Option(
    help="Denoising scheduler; 'model' keeps the one the checkpoint ships with.")]
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

NEGATIVE_PROMPT: str = _DEFAULTS["negative_prompt"]
STRENGTH: float = _DEFAULTS["strength"]
STEPS: int = _DEFAULTS["steps"]
GUIDANCE_SCALE: float = _DEFAULTS["guidance_scale"]
MAX_SIDE: int = _DEFAULTS["max_side"]
KEEP_SIZE: bool = _DEFAULTS["keep_size"]
FORMAT: OutputFormat = _DEFAULTS["output_format"]
SCHEDULER: SchedulerName = _DEFAULTS["scheduler"]


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
