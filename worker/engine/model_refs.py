"""Model references: alias, hub id, local folder or ``s3://bucket/prefix/``, resolved to
where they load from. The allow-list rule lives in ``contract.model_names`` (the producer
checks it too) and is re-exported here for the engine."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import ModelNotFound
from contract.model_names import (  # noqa: F401 - re-exported
    HUB_ALIASES,
    check_allowed,
    has_parent_segments,
    names_of,
)
from worker.engine.tiny_model import TINY_ALIAS, ensure_tiny_model

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference loads from: a local folder or a hub id."""

    reference: str
    location: str
    is_local: bool


def local_folder(reference: str) -> Path | None:
    """The absolute folder a path-like reference (``/abs``, ``./rel``, ``../up``, ``~``,
    or an existing folder's name) names; None for aliases, hub ids and ``s3://``."""
    if reference.startswith("s3://") or reference == TINY_ALIAS or reference in HUB_ALIASES:
        return None
    path = Path(reference).expanduser()
    if reference.startswith(("/", "./", "../", "~")) or path.is_dir():
        return path.resolve()
    return None


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
        from worker.engine.s3_models import sync_s3_model

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
