"""LoRA references: local files and folders, ``s3://`` keys and prefixes synced into the
cache (safetensors only, never outside it), hub ids, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.errors import LoraNotFound
from worker.engine.lora_refs import resolve_lora


def test_local_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "style").mkdir()
    (tmp_path / "style" / "pytorch_lora_weights.safetensors").write_bytes(b"w")
    (tmp_path / "empty").mkdir()
    (tmp_path / "pickled.bin").write_bytes(b"w")
    cache = tmp_path / "cache"
    assert resolve_lora(str(tmp_path / "style"), model_cache=cache) == str(tmp_path / "style")
    single = tmp_path / "style" / "pytorch_lora_weights.safetensors"
    assert resolve_lora(str(single), model_cache=cache) == str(single)
    assert resolve_lora("org/style-lora", model_cache=cache) == "org/style-lora"
    with pytest.raises(LoraNotFound, match="only .safetensors"):
        resolve_lora(str(tmp_path / "pickled.bin"), model_cache=cache)
    with pytest.raises(LoraNotFound, match="has no .safetensors"):
        resolve_lora(str(tmp_path / "empty"), model_cache=cache)
    with pytest.raises(LoraNotFound, match="not an existing"):
        resolve_lora("./nowhere/at-all", model_cache=cache)


def test_s3_keys_and_prefixes_sync_safetensors_into_the_cache(fleet, s3, tmp_path: Path):
    bucket = fleet.bucket
    for key in ("loras/one.safetensors", "loras/set/a.safetensors", "loras/set/notes.txt",
                "loras/set/code.py", "loras/set/deeper/b.safetensors"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    cache = tmp_path / "cache"

    def client():
        return s3

    one = Path(resolve_lora(f"s3://{bucket}/loras/one.safetensors", model_cache=cache,
                            s3_client_factory=client))
    assert one.is_relative_to(cache) and [p.name for p in one.iterdir()
                                          if not p.name.startswith(".")] == [
        "one.safetensors"]
    folder = Path(resolve_lora(f"s3://{bucket}/loras/set/", model_cache=cache,
                               s3_client_factory=client))
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "a.safetensors"]
    with pytest.raises(LoraNotFound, match="no such object"):
        resolve_lora(f"s3://{bucket}/loras/missing.safetensors", model_cache=cache,
                     s3_client_factory=client)
    with pytest.raises(LoraNotFound, match="'..' segments"):
        resolve_lora(f"s3://{bucket}/loras/../x.safetensors", model_cache=cache,
                     s3_client_factory=client)
    with pytest.raises(LoraNotFound, match="no S3 client"):
        resolve_lora(f"s3://{bucket}/loras/one.safetensors", model_cache=tmp_path / "c2")
