"""Model profiles: what an unset parameter becomes per family, what a family refuses,
and how a family is told from its configs."""

from __future__ import annotations

import pytest

from contract.errors import InvalidJob, ModelNotSupported
from contract.job import validate_params
from contract.model_names import HUB_ALIASES
from contract.model_profiles import (
    ALIAS_FAMILIES,
    PROFILES,
    check_known_family,
    detect_family,
    families_table,
    resolve_params,
)


def _resolve(family: str, **values):
    params = validate_params(**{"model": "m", "prompt": "p", **values})
    return resolve_params(params, PROFILES[family])


def test_unset_parameters_take_the_familys_defaults() -> None:
    turbo = _resolve("sdxl-turbo")
    assert (turbo.steps, turbo.guidance_scale, turbo.max_side, turbo.scheduler) == (
        2, 0.0, 512, "model")
    sdxl = _resolve("sdxl")
    assert (sdxl.steps, sdxl.guidance_scale, sdxl.max_side) == (30, 5.0, 1024)
    assert _resolve("sd2").max_side == 768
    assert _resolve("sd1").scheduler == "dpmsolver++" and _resolve("sd1").steps == 25


def test_what_the_job_sets_wins() -> None:
    params = _resolve("sdxl-turbo", steps=4, guidance_scale=1.5, max_side=256,
                      scheduler="euler")
    assert (params.steps, params.guidance_scale, params.max_side, params.scheduler) == (
        4, 1.5, 256, "euler")


def test_turbo_checks_steps_times_strength_and_names_the_fix() -> None:
    assert _resolve("sd-turbo", strength=0.5).steps == 2  # 2 * 0.5 = 1 step
    with pytest.raises(InvalidJob) as info:
        _resolve("sd-turbo", strength=0.3)  # 2 * 0.3 < 1
    message = str(info.value)
    assert "steps=2 (the model default)" in message and "SD-Turbo" in message
    assert "use steps >= 4" in message
    with pytest.raises(InvalidJob, match="steps \\* strength must be at least 1"):
        validate_params(model="m", prompt="p", steps=1, strength=0.5)  # set: checked at once


@pytest.mark.parametrize("family", ["flux-dev", "flux-schnell"])
def test_a_negative_prompt_on_flux_is_refused_naming_the_family(family: str) -> None:
    with pytest.raises(InvalidJob) as info:
        _resolve(family, negative_prompt="blurry", guidance_scale=None)
    assert "negative_prompt" in str(info.value) and "Flux.1" in str(info.value)


def test_a_negative_prompt_without_guidance_is_refused_and_taken_with_it() -> None:
    with pytest.raises(InvalidJob, match="no effect; set guidance_scale above 1"):
        _resolve("sdxl-turbo", negative_prompt="blurry")  # guidance 0 by default
    assert _resolve("sdxl-turbo", negative_prompt="blurry",
                    guidance_scale=2.0).negative_prompt == "blurry"
    assert _resolve("sd3.5", negative_prompt="blurry").negative_prompt == "blurry"


def test_flow_matching_families_refuse_other_schedulers() -> None:
    with pytest.raises(InvalidJob, match="flow-matching"):
        _resolve("sd3", scheduler="dpmsolver++")
    assert _resolve("flux-dev", scheduler="model").scheduler == "model"


def test_schnell_refuses_a_guidance_scale_it_has_no_input_for() -> None:
    with pytest.raises(InvalidJob, match="takes no guidance"):
        _resolve("flux-schnell", guidance_scale=3.5)
    assert _resolve("flux-schnell").guidance_scale == 0.0


def test_aliases_are_checked_up_front_and_folders_are_left_to_the_worker() -> None:
    with pytest.raises(InvalidJob, match="Flux.1 \\[dev\\]"):
        check_known_family(validate_params(model="flux-dev", prompt="p",
                                           negative_prompt="x"))
    check_known_family(validate_params(model="/models/mine", prompt="p",
                                       negative_prompt="x"))


def test_every_alias_has_a_family_and_the_table_lists_them() -> None:
    assert set(ALIAS_FAMILIES) == {"tiny", *HUB_ALIASES}
    table = {row["family"]: row for row in families_table()}
    assert set(table) == set(PROFILES)
    assert table["sdxl-turbo"]["aliases"] == ["sdxl-turbo"]
    assert table["flux-dev"]["negative_prompt"] is False
    assert table["sd2"]["max_side"] == 768


@pytest.mark.parametrize(("index", "scheduler", "denoiser", "family"), [
    ("StableDiffusionPipeline", {"prediction_type": "epsilon"}, {"cross_attention_dim": 768},
     "sd1"),
    ("StableDiffusionPipeline", {"prediction_type": "v_prediction"}, {}, "sd2"),
    ("StableDiffusionPipeline", {}, {"cross_attention_dim": 1024}, "sd2-base"),
    ("StableDiffusionPipeline", {"timestep_spacing": "trailing"}, {}, "sd-turbo"),
    ("StableDiffusionXLPipeline", {"timestep_spacing": "leading"}, {}, "sdxl"),
    ("StableDiffusionXLPipeline", {"timestep_spacing": "trailing"}, {}, "sdxl-turbo"),
    ("StableDiffusion3Pipeline", {}, {"qk_norm": None}, "sd3"),
    ("StableDiffusion3Pipeline", {}, {"qk_norm": "rms_norm"}, "sd3.5"),
    ("FluxPipeline", {}, {"guidance_embeds": True}, "flux-dev"),
    ("FluxImg2ImgPipeline", {}, {"guidance_embeds": False}, "flux-schnell"),
])
def test_families_are_told_from_their_configs(index, scheduler, denoiser, family) -> None:
    assert detect_family("m", {"_class_name": index}, scheduler, denoiser).family == family


def test_another_pipeline_class_is_not_supported_naming_it() -> None:
    with pytest.raises(ModelNotSupported) as info:
        detect_family("s3://b/kandinsky/", {"_class_name": "KandinskyV22Pipeline"}, None, None)
    assert "KandinskyV22Pipeline" in str(info.value) and "s3://b/kandinsky/" in str(info.value)
    assert "Flux.1 [dev]" in str(info.value)  # names the families that are
