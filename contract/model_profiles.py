"""Model families and their profiles: the defaults a job gets from its model.

A job leaves ``steps``, ``guidance_scale``, ``max_side`` and ``scheduler`` unset to get
its model family's (``resolve_params``); what it sets wins. A parameter the family would
ignore is refused (InvalidJob naming the family), by the producer when it knows the
family (an alias) and by the worker always, never silently dropped:
- a negative prompt on Flux (it has no classifier-free guidance) or at guidance 1 or
  below (turbo models by default: the negative prompt would have no effect);
- a scheduler other than ``model`` on the flow-matching families (SD3, Flux);
- a guidance scale on Flux.1 [schnell], which has no guidance input.

A family is detected from a diffusers folder's ``model_index.json`` pipeline class and
its scheduler and UNet/transformer configs (``detect_family``). Pure: no torch, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from contract.errors import InvalidJob, ModelNotSupported
from contract.job import GenerationParams


@dataclass(frozen=True)
class ModelProfile:
    family: str
    title: str
    pipeline: str  # the diffusers img2img pipeline class
    max_side: int  # the working size: the long side the model sees
    steps: int
    guidance_scale: float
    scheduler: str
    negative_prompt: bool  # taken (with guidance above 1)
    flow_matching: bool = False  # only its own scheduler ("model")
    takes_guidance: bool = True
    distilled: bool = False  # few-step: steps * strength is checked against its steps

    def defaults(self) -> dict[str, object]:
        return {"max_side": self.max_side, "steps": self.steps,
                "guidance_scale": self.guidance_scale, "scheduler": self.scheduler,
                "negative_prompt": self.negative_prompt}


_SD = "StableDiffusionImg2ImgPipeline"
_SDXL = "StableDiffusionXLImg2ImgPipeline"
_SD3 = "StableDiffusion3Img2ImgPipeline"
_FLUX = "FluxImg2ImgPipeline"

PROFILES: dict[str, ModelProfile] = {p.family: p for p in (
    ModelProfile("sd1", "Stable Diffusion 1.x", _SD, 512, 25, 7.5, "dpmsolver++", True),
    ModelProfile("sd2-base", "Stable Diffusion 2.x base (epsilon, 512 px)", _SD, 512, 25,
                 7.5, "dpmsolver++", True),
    ModelProfile("sd2", "Stable Diffusion 2.x (v-prediction, 768 px)", _SD, 768, 25, 7.5,
                 "dpmsolver++", True),
    ModelProfile("sd-turbo", "SD-Turbo", _SD, 512, 2, 0.0, "model", True, distilled=True),
    ModelProfile("sdxl", "Stable Diffusion XL", _SDXL, 1024, 30, 5.0, "dpmsolver++", True),
    ModelProfile("sdxl-turbo", "SDXL-Turbo", _SDXL, 512, 2, 0.0, "model", True,
                 distilled=True),
    ModelProfile("sd3", "Stable Diffusion 3", _SD3, 1024, 28, 7.0, "model", True,
                 flow_matching=True),
    ModelProfile("sd3.5", "Stable Diffusion 3.5", _SD3, 1024, 28, 3.5, "model", True,
                 flow_matching=True),
    ModelProfile("flux-dev", "Flux.1 [dev]", _FLUX, 1024, 28, 3.5, "model", False,
                 flow_matching=True),
    ModelProfile("flux-schnell", "Flux.1 [schnell]", _FLUX, 1024, 4, 0.0, "model", False,
                 flow_matching=True, takes_guidance=False, distilled=True),
)}

# The family of each alias (contract.model_names), known without reading the model.
ALIAS_FAMILIES: dict[str, str] = {
    "tiny": "sd1", "sd15": "sd1", "sd21": "sd2", "sd-turbo": "sd-turbo", "sdxl": "sdxl",
    "sdxl-turbo": "sdxl-turbo", "sd3-medium": "sd3", "sd35-medium": "sd3.5",
    "sd35-large": "sd3.5", "flux-dev": "flux-dev", "flux-schnell": "flux-schnell",
}

# model_index.json's pipeline class -> kind; text-to-image and img2img classes both load.
_KINDS = {
    "StableDiffusionPipeline": "sd", _SD: "sd",
    "StableDiffusionXLPipeline": "sdxl", _SDXL: "sdxl",
    "StableDiffusion3Pipeline": "sd3", _SD3: "sd3",
    "FluxPipeline": "flux", _FLUX: "flux",
}


def profile_of_alias(reference: str) -> ModelProfile | None:
    family = ALIAS_FAMILIES.get(reference)
    return PROFILES[family] if family else None


def detect_family(reference: str, model_index: dict, scheduler: dict | None,
                  denoiser: dict | None) -> ModelProfile:
    """The profile of a diffusers model from its configs (``scheduler/scheduler_config
    .json``, ``unet/`` or ``transformer/config.json``); ModelNotSupported names a
    pipeline class that is none of the families."""
    class_name = str(model_index.get("_class_name", "?"))
    kind = _KINDS.get(class_name)
    if kind is None:
        raise ModelNotSupported(
            f"model {reference!r} is a {class_name}, not one of the supported families "
            f"({', '.join(p.title for p in PROFILES.values())})")
    scheduler = scheduler or {}
    denoiser = denoiser or {}
    trailing = scheduler.get("timestep_spacing") == "trailing"
    if kind == "sd":
        if trailing:
            return PROFILES["sd-turbo"]
        if scheduler.get("prediction_type") == "v_prediction":
            return PROFILES["sd2"]
        return PROFILES["sd2-base" if denoiser.get("cross_attention_dim") == 1024 else "sd1"]
    if kind == "sdxl":
        return PROFILES["sdxl-turbo" if trailing else "sdxl"]
    if kind == "sd3":
        return PROFILES["sd3.5" if denoiser.get("qk_norm") else "sd3"]
    return PROFILES["flux-dev" if denoiser.get("guidance_embeds") else "flux-schnell"]


def resolve_params(params: GenerationParams, profile: ModelProfile) -> GenerationParams:
    """``params`` with every unset default taken from ``profile``; InvalidJob names a
    parameter the family would ignore, or too few denoising steps."""
    where = f"model {params.model!r} is {profile.title}"
    if params.scheduler not in (None, "model") and profile.flow_matching:
        raise InvalidJob(f"scheduler {params.scheduler!r}: {where}, which runs only its own "
                         "flow-matching scheduler; leave it unset or use 'model'")
    if params.guidance_scale not in (None, 0.0) and not profile.takes_guidance:
        raise InvalidJob(f"guidance_scale {params.guidance_scale}: {where}, which takes no "
                         "guidance; leave it unset")
    steps = params.steps if params.steps is not None else profile.steps
    guidance = (params.guidance_scale if params.guidance_scale is not None
                else profile.guidance_scale)
    if params.negative_prompt and not profile.negative_prompt:
        raise InvalidJob(f"negative_prompt: {where}, which takes no negative prompt; "
                         "leave it empty")
    if params.negative_prompt and guidance <= 1.0:
        raise InvalidJob(f"negative_prompt: at guidance_scale {guidance} ({where}) it would "
                         "have no effect; set guidance_scale above 1 or leave it empty")
    if int(steps * params.strength) < 1:
        raise InvalidJob(
            f"steps * strength must be at least 1 denoising step (steps={steps}"
            f"{' (the model default)' if params.steps is None else ''}, strength="
            f"{params.strength}; {where}): use steps >= {math.ceil(1 / params.strength)}")
    return params.model_copy(update={
        "steps": steps, "guidance_scale": guidance,
        "max_side": params.max_side if params.max_side is not None else profile.max_side,
        "scheduler": params.scheduler if params.scheduler is not None else profile.scheduler,
    })


def check_known_family(params: GenerationParams) -> None:
    """Refuse up front (InvalidJob) what the family of an alias would refuse; a folder,
    hub id or s3:// model is checked by the worker once it has read the model."""
    profile = profile_of_alias(params.model)
    if profile is not None:
        resolve_params(params, profile)


def families_table() -> list[dict[str, object]]:
    """Every family with its defaults and aliases (``img2img-producer schema``, README)."""
    return [{"family": p.family, "title": p.title, "pipeline": p.pipeline,
             "aliases": [a for a, f in ALIAS_FAMILIES.items() if f == p.family],
             **p.defaults()} for p in PROFILES.values()]
