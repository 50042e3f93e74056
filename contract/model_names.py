"""Model names and the allow-list rule, shared so the producer refuses up front what the
workers would refuse (``IMG2IMG_ALLOWED_MODELS``). Pure: no torch, no I/O."""

from __future__ import annotations

import fnmatch

from contract.errors import ModelNotAllowed

# Aliases for well-known img2img-capable checkpoints on the Hugging Face hub.
HUB_ALIASES: dict[str, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sd-turbo": "stabilityai/sd-turbo",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sdxl-turbo": "stabilityai/sdxl-turbo",
    "sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
    "sd35-medium": "stabilityai/stable-diffusion-3.5-medium",
    "sd35-large": "stabilityai/stable-diffusion-3.5-large",
    "flux-dev": "black-forest-labs/FLUX.1-dev",
    "flux-schnell": "black-forest-labs/FLUX.1-schnell",
}


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
                              "allowed in a model reference; give the path without them")
    if any(fnmatch.fnmatchcase(name, pattern) for name in names_of(reference)
           for pattern in allowed):
        return
    raise ModelNotAllowed(
        f"model {reference!r} is not allowed: add it, or a pattern matching it (fnmatch, "
        f"e.g. '/models/*' or 's3://bucket/models/*'), to IMG2IMG_ALLOWED_MODELS (now "
        f"{','.join(allowed) or 'empty'})")
