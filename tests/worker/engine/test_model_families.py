"""Each family's built model is recognised from its folder, an s3:// copy of it syncs
exactly the files that family loads, and a family the worker cannot run fails at load
time with a permanent error naming it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from contract.errors import ModelNotFound, ModelNotSupported, is_permanent
from contract.model_profiles import PROFILES
from tests.support.model_families import DETECTED_AS
from worker.engine.engine import Engine, pipeline_class
from worker.engine.model_families import read_profile
from worker.engine.model_refs import ModelSource
from worker.engine.s3_models import s3_model_dir, sync_s3_model
from worker.settings import WorkerSettings

# Beside a real model on S3 lie files it never loads: a root-level single-file
# checkpoint, pickled weights, code, an fp16 variant beside plain weights, a folder
# model_index.json does not name.
DECOYS = ["sd_xl_base_1.0.safetensors", "vae/diffusion_pytorch_model.bin",
          "vae/diffusion_pytorch_model.fp16.safetensors", "vae/pipeline.py",
          "extras/config.json", "extras/model.safetensors", "README.md"]


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def test_each_built_family_is_recognised_from_its_folder(family_models) -> None:
    for name, folder in family_models.items():
        profile = read_profile(ModelSource(str(folder), str(folder), True))
        assert profile.family == DETECTED_AS[name], name


def test_an_s3_model_of_every_family_syncs_exactly_what_it_loads(family_models, s3, fleet,
                                                                  tmp_path) -> None:
    cache = tmp_path / "cache"
    for name, folder in family_models.items():
        prefix = f"models/{name}/"
        for relative in _files(folder):
            s3.upload_file(str(folder / relative), fleet.bucket, prefix + relative)
        for decoy in DECOYS:
            s3.put_object(Bucket=fleet.bucket, Key=prefix + decoy, Body=b"never fetched")
        uri = f"s3://{fleet.bucket}/{prefix}"

        synced = sync_s3_model(uri, cache, s3)

        assert synced == s3_model_dir(uri, cache) and synced.is_relative_to(cache / "s3")
        assert _files(synced) == _files(folder), name  # no decoy, nothing missing
        expected = {"sd3": ["tokenizer_3/spiece.model", "transformer/config.json",
                            "text_encoder_3/model.safetensors"],
                    "flux": ["tokenizer_2/spiece.model", "tokenizer_2/tokenizer.json",
                             "transformer/diffusion_pytorch_model.safetensors"],
                    "sdxl": ["text_encoder_2/model.safetensors", "unet/config.json"]}
        for relative in expected.get(name, []):
            assert (synced / relative).is_file(), (name, relative)
        assert read_profile(ModelSource(uri, str(synced), True)).family == DETECTED_AS[name]


def _settings(model_cache: Path, allowed: list[str]) -> WorkerSettings:
    return WorkerSettings(model_cache=model_cache, allowed_models=allowed, device="cpu",
                          dtype="auto", memory_mode="fast", compile=False)


def test_a_family_the_worker_cannot_run_fails_at_load_naming_it(family_models, tmp_path,
                                                                model_cache) -> None:
    folder = tmp_path / "kandinsky"
    shutil.copytree(family_models["sd1"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "KandinskyV22Pipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    engine = Engine(_settings(model_cache, [str(folder)]))

    with pytest.raises(ModelNotSupported) as info:
        engine.model(str(folder))
    assert "KandinskyV22Pipeline" in str(info.value) and is_permanent(info.value)
    with pytest.raises(ModelNotSupported):  # and for every job of it, without a retry
        engine.profile(str(folder))


def test_a_family_this_diffusers_lacks_is_named() -> None:
    missing = dataclasses.replace(PROFILES["flux-dev"], pipeline="FluxKontextImg2ImgPipeline9")
    with pytest.raises(ModelNotSupported, match="Flux.1 \\[dev\\] needs FluxKontext"):
        pipeline_class(missing)
    assert pipeline_class(PROFILES["sd3"]).__name__ == "StableDiffusion3Img2ImgPipeline"


def test_a_hub_ids_family_is_read_from_the_hugging_face_cache(family_models, tmp_path,
                                                              monkeypatch) -> None:
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--someone--tiny-sdxl" / "snapshots" / "abc123"
    shutil.copytree(family_models["sdxl-turbo"], snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    cached = read_profile(ModelSource("someone/tiny-sdxl", "someone/tiny-sdxl", False))
    assert cached.family == "sdxl-turbo"
    with pytest.raises(ModelNotFound, match="not in the Hugging Face cache"):
        read_profile(ModelSource("someone/absent", "someone/absent", False))
    # an alias's family is known without any file
    assert read_profile(ModelSource("flux-dev", "black-forest-labs/FLUX.1-dev",
                                    False)).family == "flux-dev"


@pytest.mark.parametrize(("name", "sized"), [("sd3", True), ("flux", True), ("sdxl", False)])
def test_each_family_loads_with_its_own_pipeline_class(name, sized, family_models,
                                                       model_cache) -> None:
    folder = str(family_models[name])
    loaded = Engine(_settings(model_cache, [folder])).model(folder)
    assert type(loaded.pipeline).__name__ == loaded.profile.pipeline
    assert loaded.sized_call is sized  # SD3/Flux are told the image's size
