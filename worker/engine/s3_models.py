"""Syncing a diffusers model folder from ``s3://bucket/prefix/`` into the local cache."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from contract.errors import ModelNotFound
from contract.locations import parse_s3_uri

_COMPLETE_MARKER = ".img2img-sync-complete"
# What a diffusers model folder needs: configs, safetensors weights, tokenizer files.
# Pickled weights (.bin, .ckpt, .pt) and code (.py) are never fetched.
SYNCED_SUFFIXES = (".json", ".safetensors", ".txt", ".model")


def s3_model_dir(uri: str, model_cache: Path) -> Path:
    """The cache folder of an S3 model; ModelNotFound when it would leave the cache."""
    loc = parse_s3_uri(uri, prefix=True)
    root = (model_cache / "s3").resolve()
    target = (root / loc.bucket / loc.key.strip("/")).resolve()
    parts = loc.key.strip("/").split("/")
    if any(part in ("", ".", "..") for part in parts) or not target.is_relative_to(root):
        raise ModelNotFound(f"model {uri!r}: the prefix must not contain empty, '.' or "
                            "'..' segments")
    return target


def _inside(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` when it stays inside ``folder``, else None."""
    dest = (folder / relative).resolve()
    return dest if dest.is_relative_to(folder) and dest != folder else None


def sync_s3_model(uri: str, model_cache: Path, s3: Any) -> Path:
    """Download every object under the prefix that is missing or differs in size.

    Only SYNCED_SUFFIXES are fetched, matching the engine's safetensors-only loading
    without remote code; every file lands inside the model's cache folder.
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
            if not relative.endswith(SYNCED_SUFFIXES):
                continue
            dest = _inside(target, relative)
            if dest is None:
                continue  # a key with '..' segments: never written outside the model
            found = True
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
