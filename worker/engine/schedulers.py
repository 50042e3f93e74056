"""Scheduler names a job may ask for, mapped to diffusers scheduler classes."""

from __future__ import annotations

from typing import Any


def make_scheduler(name: str, base: Any) -> Any:
    """A scheduler of kind ``name`` built from ``base``'s config; ``model`` keeps base."""
    if name == "model":
        return base
    import diffusers

    classes = {
        "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
        "euler": ("EulerDiscreteScheduler", {}),
        "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
        "ddim": ("DDIMScheduler", {}),
        "pndm": ("PNDMScheduler", {}),
        "lcm": ("LCMScheduler", {}),
    }
    class_name, extra = classes[name]
    return getattr(diffusers, class_name).from_config(base.config, **extra)
