"""The generation flags both CLIs take, declared once so their names, help and
defaults (those of GenerationParams) cannot drift apart."""

from __future__ import annotations

from typing import Annotated

import typer

from contract.job import GenerationParams, OutputFormat

_DEFAULTS = {name: field.default for name, field in GenerationParams.model_fields.items()}

Models = Annotated[list[str] | None, typer.Option(
    "--model", "-m", help="Model alias, hub id, folder or s3:// prefix; repeat for a random "
    "pick per image. Default: IMG2IMG_DEFAULT_MODELS.")]
Prompts = Annotated[list[str] | None, typer.Option(
    "--prompt", "-p", help="Prompt; repeat for a random pick per image. Default: "
    "IMG2IMG_DEFAULT_PROMPTS.")]
NegativePrompt = Annotated[str, typer.Option()]
Strength = Annotated[float, typer.Option(help="How much to change the image, (0, 1].")]
Steps = Annotated[int, typer.Option(help="Scheduler steps; int(steps * strength) run.")]
GuidanceScale = Annotated[float, typer.Option()]
Seed = Annotated[int | None, typer.Option(
    help="Seed for every image and for the model/prompt picks (default: per image, "
    "derived from its job id).")]
MaxSide = Annotated[int, typer.Option(help="Long side the model sees (multiple of 8).")]
KeepSize = Annotated[bool, typer.Option(
    "--keep-size/--no-keep-size", help="Resize outputs back to the input's size.")]
Format = Annotated[OutputFormat, typer.Option("--format")]
Scheduler = Annotated[str, typer.Option(
    help="dpmsolver++, euler, euler-ancestral, ddim, pndm, lcm, or model (its own).")]

NEGATIVE_PROMPT: str = _DEFAULTS["negative_prompt"]
STRENGTH: float = _DEFAULTS["strength"]
STEPS: int = _DEFAULTS["steps"]
GUIDANCE_SCALE: float = _DEFAULTS["guidance_scale"]
MAX_SIDE: int = _DEFAULTS["max_side"]
KEEP_SIZE: bool = _DEFAULTS["keep_size"]
FORMAT: OutputFormat = _DEFAULTS["output_format"]
SCHEDULER: str = _DEFAULTS["scheduler"]
