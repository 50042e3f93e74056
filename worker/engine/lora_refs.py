"""LoRA references resolved to where their weights load from: a local ``.safetensors``
file or folder, ``s3://bucket/key.safetensors`` or ``s3://bucket/prefix/`` synced into
the model cache (safetensors only), or a hub id. The allow-list rule lives in
``contract.loras`` (the producer checks it too)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.aws_errors import is_not_found, is_transient
from contract.errors import LoraNotFound, StorageUnavailable
from contract.locations import parse_s3_uri

LORA_SUFFIX = ".safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_COMPLETE_MARKER = ".img2img-sync-complete"


def resolve_lora(ref: str, *, model_cache: Path,
                 s3_client_factory: Callable[[], Any] | None = None) -> str:
    """A path (file or folder) or hub id diffusers' ``load_lora_weights`` takes."""
    if ref.startswith("s3://"):
        if s3_client_factory is None:
            raise LoraNotFound(f"LoRA {ref!r}: no S3 client configured")
        return str(sync_s3_lora(ref, model_cache, s3_client_factory()))
    path = Path(ref).expanduser()
    if path.is_file():
        if path.suffix != LORA_SUFFIX:
            raise LoraNotFound(f"LoRA {ref!r}: only {LORA_SUFFIX} files are loaded")
        return str(path.resolve())
    if path.is_dir():
        if not any(path.glob(f"*{LORA_SUFFIX}")):
            raise LoraNotFound(f"LoRA folder {ref!r} has no {LORA_SUFFIX} file")
        return str(path.resolve())
    if _HUB_ID.match(ref) and not ref.startswith((".", "/")):
        return ref
    raise LoraNotFound(f"LoRA {ref!r} is not an existing {LORA_SUFFIX} file or folder, "
                       "an s3:// key or prefix, or a hub id (org/name)")


def s3_lora_dir(uri: str, model_cache: Path) -> Path:
    """The cache folder of an S3 LoRA; LoraNotFound when it would leave the cache."""
    loc = parse_s3_uri(uri)
    root = (model_cache / "loras" / "s3").resolve()
    key = loc.key.strip("/")
    target = (root / loc.bucket / key).resolve()
    if any(part in ("", ".", "..") for part in key.split("/")) or not target.is_relative_to(
            root):
        raise LoraNotFound(f"LoRA {uri!r}: the key must not contain empty, '.' or '..' "
                           "segments")
    return target


def sync_s3_lora(uri: str, model_cache: Path, s3: Any) -> Path:
    """Download the ``.safetensors`` object, or those directly under the prefix, into
    the cache once; every file lands inside the LoRA's cache folder."""
    loc = parse_s3_uri(uri)
    target = s3_lora_dir(uri, model_cache)
    if (target / _COMPLETE_MARKER).is_file():
        return target
    if loc.key.endswith(LORA_SUFFIX):
        keys = [loc.key]
    else:
        prefix = loc.key.rstrip("/") + "/"
        keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
                    Bucket=loc.bucket, Prefix=prefix) for obj in page.get("Contents", [])
                if "/" not in obj["Key"][len(prefix):] and obj["Key"].endswith(LORA_SUFFIX)]
        if not keys:
            raise LoraNotFound(f"LoRA {uri!r}: no {LORA_SUFFIX} object directly under it")
    target.mkdir(parents=True, exist_ok=True)
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        partial = target / (name + ".partial")
        try:
            s3.download_file(loc.bucket, key, str(partial))
        except Exception as exc:
            if is_not_found(exc):
                raise LoraNotFound(f"LoRA {uri!r}: no such object s3://{loc.bucket}/{key}"
                                   ) from None
            if is_transient(exc):
                raise StorageUnavailable(f"LoRA {uri!r}: {exc}") from exc
            raise
        os.replace(partial, target / name)
    (target / _COMPLETE_MARKER).touch()
    return target

