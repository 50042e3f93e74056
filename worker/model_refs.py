"""Model references: alias, hub id, local folder or ``s3://bucket/prefix/``, and the
allow-list that decides which of them may load."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import ModelNotAllowed, ModelNotFound
from worker.tiny_model import TINY_ALIAS, ensure_tiny_model

# Aliases for well-known img2img-capable checkpoints on the Hugging Face hub.
HUB_ALIASES: dict[str, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sd-turbo": "stabilityai/sd-turbo",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sdxl-turbo": "stabilityai/sdxl-turbo",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference loads from: a local folder or a hub id."""

    reference: str
    location: str
    is_local: bool


def names_of(reference: str) -> set[str]:
    """The reference plus its alias/hub-id twin, so allowing one allows the other."""
    names = {reference}
    if reference in HUB_ALIASES:
        names.add(HUB_ALIASES[reference])
    names.update(alias for alias, hub_id in HUB_ALIASES.items() if hub_id == reference)
    return names


def has_parent_segments(reference: str) -> bool:
    """True when a path-like reference climbs out with '..' (or '.') segments.

    fnmatch's ``*`` matches '/', so ``/models/../etc`` would match ``/models/*``: such
    references are refused before any pattern is tried.
    """
    path = reference.removeprefix("s3://")
    return any(part in ("..", ".") for part in path.replace("\\", "/").split("/"))


def check_allowed(reference: str, allowed: list[str]) -> None:
    """Raise ModelNotAllowed unless a pattern (fnmatch, e.g. ``s3://models/*``) matches."""
    if has_parent_segments(reference):
        raise ModelNotAllowed(f"model {reference!r}: '..' and '.' path segments are not "
                              "allowed in a model reference")
    if any(fnmatch.fnmatchcase(name, pattern) for name in names_of(reference)
           for pattern in allowed):
        return
    raise ModelNotAllowed(
        f"model {reference!r} is not allowed; IMG2IMG_ALLOWED_MODELS is {','.join(allowed)}")


def resolve_model(
    reference: str,
    *,
    model_cache: Path,
    s3_client_factory: Callable[[], Any] | None = None,
) -> ModelSource:
    """Turn a reference into a loadable location, building or syncing it if needed."""
    if reference == TINY_ALIAS:
        return ModelSource(reference, str(ensure_tiny_model(model_cache)), True)
    if reference in HUB_ALIASES:
        return ModelSource(reference, HUB_ALIASES[reference], False)
    if reference.startswith("s3://"):
        from worker.s3_models import sync_s3_model

        if s3_client_factory is None:
            raise ModelNotFound(f"model {reference!r}: no S3 client configured")
        folder = sync_s3_model(reference, model_cache, s3_client_factory())
        return ModelSource(reference, str(folder), True)
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelNotFound(f"model folder {reference!r} has no model_index.json")
        return ModelSource(reference, str(path.resolve()), True)
    if _HUB_ID.match(reference):
        return ModelSource(reference, reference, False)
    raise ModelNotFound(
        f"model {reference!r} is not an alias ({', '.join([TINY_ALIAS, *HUB_ALIASES])}), "
        "a hub id (org/name), an existing folder or an s3:// prefix")
