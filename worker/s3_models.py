"""Syncing a diffusers model folder from ``s3://bucket/prefix/`` into the local cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from contract.errors import ModelNotFound
from contract.locations import parse_s3_uri

_COMPLETE_MARKER = ".img2img-sync-complete"


def s3_model_dir(uri: str, model_cache: Path) -> Path:
    loc = parse_s3_uri(uri, prefix=True)
    return model_cache / "s3" / loc.bucket / loc.key.strip("/")


def sync_s3_model(uri: str, model_cache: Path, s3: Any) -> Path:
    """Download every object under the prefix that is missing or differs in size.

    Only safetensors weights are fetched (``.bin``/``.ckpt`` pickles are skipped),
    matching the engine's safetensors-only loading.
    """
    loc = parse_s3_uri(uri, prefix=True)
    target = s3_model_dir(uri, model_cache)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    paginator = s3.get_paginator("list_objects_v2")
    found = False
    for page in paginator.paginate(Bucket=loc.bucket, Prefix=loc.key):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(loc.key):]
            if not relative or relative.endswith("/") or relative.endswith((".bin", ".ckpt",
                                                                            ".pt", ".pth")):
                continue
            if ".." in Path(relative).parts:
                continue
            found = True
            dest = target / relative
            if dest.is_file() and dest.stat().st_size == obj["Size"]:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(dest.name + ".partial")
            s3.download_file(loc.bucket, obj["Key"], str(partial))
            os.replace(partial, dest)
    if not found or not (target / "model_index.json").is_file():
        raise ModelNotFound(f"model {uri!r}: no diffusers model (model_index.json) under it")
    (target / _COMPLETE_MARKER).touch()
    return target
