"""Syncing a diffusers model folder from ``s3://bucket/prefix/`` into the local cache.

Exactly what the model's family loads is fetched: ``model_index.json``, and in each
component folder it names (``unet/``, ``transformer/``, ``text_encoder_3/``,
``tokenizer_2/`` with T5's ``spiece.model``, ...) the configs, tokenizer files and
safetensors weights; not other folders, root-level single-file checkpoints, pickled
weights or code, nor a weights variant (``*.fp16.safetensors``) beside plain weights.
"""

from __future__ import annotations

import json
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


def components_of(model_index: dict) -> set[str]:
    """The component folders a ``model_index.json`` names (``[null, null]`` is none)."""
    return {name for name, value in model_index.items()
            if not name.startswith("_") and isinstance(value, list) and len(value) == 2
            and value[0] is not None}


def _is_variant(name: str) -> bool:
    """``model.fp16.safetensors``, ``x.fp16-00001-of-00002.safetensors`` and their
    ``x.safetensors.index.fp16.json`` index: weights of a named variant."""
    if name.endswith(".safetensors"):
        return name.count(".") >= 2
    return ".safetensors.index." in name and not name.endswith(".safetensors.index.json")


def wanted_files(keys: dict[str, int], components: set[str]) -> dict[str, int]:
    """Of ``{relative key: size}``, what the model loads (see the module docstring)."""
    chosen: dict[str, int] = {}
    for relative, size in keys.items():
        folder, _, name = relative.rpartition("/")
        if relative == "model_index.json" or (
                folder in components and name.endswith(SYNCED_SUFFIXES)):
            chosen[relative] = size
    plain = {r.rpartition("/")[0] for r in chosen
             if r.endswith(".safetensors") and not _is_variant(r.rpartition("/")[2])}
    return {r: s for r, s in chosen.items()
            if not (r.rpartition("/")[0] in plain and _is_variant(r.rpartition("/")[2]))}


def sync_s3_model(uri: str, model_cache: Path, s3: Any) -> Path:
    """Download what the model loads (``wanted_files``) that is missing or differs in
    size; every file lands inside the model's cache folder."""
    loc = parse_s3_uri(uri, prefix=True)
    target = s3_model_dir(uri, model_cache)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    keys: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket,
                                                              Prefix=loc.key):
        for obj in page.get("Contents", []):
            keys[obj["Key"][len(loc.key):]] = obj["Size"]
    if "model_index.json" not in keys:
        raise ModelNotFound(f"model {uri!r}: no diffusers model (model_index.json) under it")
    index = s3.get_object(Bucket=loc.bucket, Key=loc.key + "model_index.json")["Body"].read()
    try:
        components = components_of(json.loads(index))
    except (ValueError, AttributeError):
        raise ModelNotFound(f"model {uri!r}: model_index.json is not a JSON object") from None
    for relative, size in wanted_files(keys, components).items():
        dest = _inside(target, relative)
        if dest is None:
            continue  # a key with '..' segments: never written outside the model
        if dest.is_file() and dest.stat().st_size == size:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        s3.download_file(loc.bucket, loc.key + relative, str(partial))
        os.replace(partial, dest)
    (target / _COMPLETE_MARKER).touch()
    return target
