"""LoRA adapters a job asks for: the ``loras`` field, ``REF[:SCALE]`` specs, and the
allow-list rule (``IMG2IMG_ALLOWED_LORAS``), shared so the producer refuses up front
what the workers would refuse. Pure: no torch, no I/O."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from contract.errors import InvalidJob, LoraNotAllowed
from contract.model_names import has_parent_segments

MAX_LORAS_PER_JOB = 4
MAX_LORA_SCALE = 4.0
DEFAULT_LORA_SCALE = 1.0


class LoraRef(BaseModel):
    """One adapter: where it loads from (hub id, ``s3://…`` or a local path) and how
    strongly it applies (0 turns it off; negative scales subtract it)."""

    model_config = ConfigDict(frozen=True)

    ref: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^\S+$")]
    scale: Annotated[float, Field(ge=-MAX_LORA_SCALE, le=MAX_LORA_SCALE)] = DEFAULT_LORA_SCALE

    @property
    def label(self) -> str:
        """``ref:scale``, as ``--lora`` takes it and the gallery shows it."""
        return f"{self.ref}:{self.scale:g}"


def parse_lora_spec(spec: str) -> LoraRef:
    """``REF`` or ``REF:SCALE`` to a LoraRef (``s3://b/x:0.5`` splits at the last ':'
    only when what follows is a number); InvalidJob names the bad spec."""
    text = spec.strip()
    ref, scale = text, DEFAULT_LORA_SCALE
    head, sep, tail = text.rpartition(":")
    if sep and head and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)", tail):
        ref, scale = head, float(tail)
    try:
        return LoraRef(ref=ref, scale=scale)
    except ValueError as exc:
        detail = "; ".join(e["msg"] for e in getattr(exc, "errors", lambda: [])()) or exc
        raise InvalidJob(f"--lora {spec!r}: {detail} (use REF[:SCALE], scale within "
                         f"±{MAX_LORA_SCALE:g})") from None


def parse_lora_specs(text: str) -> list[LoraRef]:
    """A jobs-file cell: specs separated by ';' (``style:0.8;s3://b/detail``)."""
    return [parse_lora_spec(part) for part in text.split(";") if part.strip()]


def loras_label(loras: tuple[LoraRef, ...] | list[LoraRef]) -> str:
    """The adapters as one short line (empty when none)."""
    return ", ".join(lora.label for lora in loras)


def check_lora_allowed(ref: str, allowed: list[str]) -> None:
    """Raise LoraNotAllowed unless a pattern (fnmatch, e.g. ``s3://loras/*``) matches."""
    if has_parent_segments(ref):
        raise LoraNotAllowed(f"LoRA {ref!r}: '..' and '.' path segments are not allowed in "
                             "a LoRA reference")
    if any(fnmatch.fnmatchcase(ref, pattern) for pattern in allowed):
        return
    shown = ",".join(allowed) if allowed else "empty (no LoRAs admitted)"
    raise LoraNotAllowed(f"LoRA {ref!r} is not allowed; IMG2IMG_ALLOWED_LORAS is {shown}")
