"""Which family a model is, before its weights load: a reference resolved once to its
source (built, synced or found) and its profile (``contract.model_profiles``), read from
the folder's ``model_index.json`` and scheduler and UNet/transformer configs.

An alias's family is known without reading anything; a hub id's configs are read from
the Hugging Face cache (fetched, a few KiB, only when the hub can be reached).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import ModelNotFound, StorageUnavailable
from contract.model_profiles import ModelProfile, detect_family, profile_of_alias
from worker.engine.model_refs import ModelSource, resolve_model

# A reference that failed to resolve is not tried again for this long.
RETRY_SECONDS = 60.0
_DENOISERS = ("unet", "transformer")


@dataclass(frozen=True)
class ResolvedModel:
    source: ModelSource
    profile: ModelProfile


def read_profile(source: ModelSource) -> ModelProfile:
    """The profile of a resolved model; ModelNotSupported names a foreign family."""
    alias_profile = profile_of_alias(source.reference)
    if alias_profile is not None:
        return alias_profile
    read = _local_reader(Path(source.location)) if source.is_local else _hub_reader(source)
    index = read("model_index.json")
    if index is None:
        raise ModelNotFound(f"model {source.reference!r} has no model_index.json")
    scheduler = read("scheduler/scheduler_config.json")
    denoiser = next((c for c in (read(f"{d}/config.json") for d in _DENOISERS
                                 if d in index) if c is not None), None)
    return detect_family(source.reference, index, scheduler, denoiser)


def _local_reader(folder: Path) -> Callable[[str], dict | None]:
    def read(name: str) -> dict | None:
        path = folder / name
        return _parse(path, name) if path.is_file() else None
    return read


def _hub_reader(source: ModelSource) -> Callable[[str], dict | None]:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from worker.engine.engine import hub_reachable

    online = hub_reachable()

    def read(name: str) -> dict | None:
        cached = try_to_load_from_cache(source.location, name)
        if isinstance(cached, str):
            return _parse(Path(cached), name)
        if not online:
            if name == "model_index.json":
                raise ModelNotFound(f"model {source.reference!r} is not in the Hugging Face "
                                    "cache (HF_HOME) and the hub cannot be reached")
            return None
        try:
            return _parse(Path(hf_hub_download(source.location, name)), name)
        except Exception as exc:  # noqa: BLE001 - a missing file, or the hub failing
            if "404" in str(exc) or "EntryNotFound" in type(exc).__name__:
                return None
            raise StorageUnavailable(f"model {source.reference!r}: {name}: {exc}") from exc
    return read


def _parse(path: Path, name: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{name} of the model is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelNotFound(f"{name} of the model is not a JSON object")
    return data


class ModelResolver:
    """References resolved once each (thread-safe: I/O threads ask at once); a failure
    is remembered for RETRY_SECONDS so each job does not pay for it again."""

    def __init__(self, model_cache: Path,
                 s3_client_factory: Callable[[], Any] | None = None) -> None:
        self._model_cache = model_cache
        self._s3_client_factory = s3_client_factory
        self._resolved: dict[str, ResolvedModel] = {}
        self._failed: dict[str, tuple[float, Exception]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def resolve(self, reference: str) -> ResolvedModel:
        with self._guard:
            lock = self._locks.setdefault(reference, threading.Lock())
        with lock:
            if reference in self._resolved:
                return self._resolved[reference]
            failed = self._failed.get(reference)
            if failed is not None and time.monotonic() - failed[0] < RETRY_SECONDS:
                raise failed[1]
            try:
                source = resolve_model(reference, model_cache=self._model_cache,
                                       s3_client_factory=self._s3_client_factory)
                resolved = ResolvedModel(source, read_profile(source))
            except (ModelNotFound, StorageUnavailable) as exc:
                self._failed[reference] = (time.monotonic(), exc)
                raise
            self._resolved[reference] = resolved
            return resolved
