"""Turning inputs and parameters into job messages (pure: no AWS calls).

Model and prompt are picked per image by ``contract.picks``, as the worker's local folder
mode does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from common.cli_options import FLAG_NAMES
from contract.errors import InvalidJob, LoraNotAllowed, ModelNotAllowed
from contract.job import GenerationParams, JobMessage, validate_params
from contract.locations import S3Location
from contract.loras import check_lora_allowed
from contract.model_names import check_allowed
from contract.model_profiles import check_known_family
from contract.picks import pick_model_and_prompt
from producer.listing import SourceObject

BATCH_ID_PREFIX = "b-"
BATCH_ID_HEX_CHARS = 16


@dataclass(frozen=True)
class JobControls:
    """A job's life cycle, the same for every job of an enqueue (not part of its id)."""

    expires_at: datetime | None = None
    timeout_seconds: int | None = None
    callback_url: str | None = None

    @classmethod
    def of(cls, *, ttl_seconds: float | None, timeout_seconds: int | None,
           callback_url: str | None) -> JobControls:
        expires = (datetime.now(timezone.utc) + timedelta(seconds=ttl_seconds)
                   if ttl_seconds is not None else None)
        return cls(expires_at=expires, timeout_seconds=timeout_seconds,
                   callback_url=callback_url)


@dataclass(frozen=True)
class Defaults:
    """The command line's parameters: model and prompt lists, and the common values."""

    models: list[str]
    prompts: list[str]
    common: dict[str, Any]  # every other GenerationParams field
    controls: JobControls = JobControls()
    # The fleet's IMG2IMG_ALLOWED_MODELS when the producer is given it too: a model the
    # workers would refuse is refused here, before anything is sent. None: no check.
    allowed_models: list[str] | None = None
    allowed_loras: list[str] | None = None  # the same for IMG2IMG_ALLOWED_LORAS

    @property
    def choice_seed(self) -> int | None:
        return self.common.get("seed")

    def check(self) -> None:
        """Validate every model with the common values once, before any work."""
        if not self.models or not self.prompts:
            raise InvalidJob("no model or prompt: pass --model/--prompt or set "
                             "IMG2IMG_DEFAULT_MODELS/IMG2IMG_DEFAULT_PROMPTS")
        for model in self.models:
            params = validate_params(model=model, prompt=self.prompts[0],
                                     field_names=FLAG_NAMES, **self.common)
            check_known_family(params)
            self.check_loras(params)
            self.check_model(model)
        for prompt in self.prompts:
            validate_params(model=self.models[0], prompt=prompt, field_names=FLAG_NAMES,
                            **self.common)

    def check_model(self, model: str) -> None:
        """ModelNotAllowed when the fleet's allow-list (if known) refuses ``model``."""
        if self.allowed_models is not None:
            check_allowed(model, self.allowed_models)

    def check_loras(self, params: GenerationParams) -> None:
        """LoraNotAllowed when the fleet's LoRA allow-list (if known) refuses one."""
        if self.allowed_loras is not None:
            for lora in params.loras:
                check_lora_allowed(lora.ref, self.allowed_loras)


@dataclass(frozen=True)
class PlannedInput:
    """An input image with the parameters its jobs-file row sets (none for a listing)."""

    source: SourceObject
    overrides: dict[str, Any] = field(default_factory=dict)
    line: int | None = None


@dataclass
class Plan:
    jobs: list[JobMessage]
    duplicates: int = 0  # inputs whose job (same object, same parameters) was already planned
    problems: list[str] = field(default_factory=list)  # "line N: field: why"
    skipped: list[str] = field(default_factory=list)  # "s3://...: why" (listed inputs)


def plan_jobs(inputs: list[PlannedInput], defaults: Defaults, *, output: S3Location,
              batch_id: str) -> Plan:
    """One job per input. A jobs-file row that cannot be a job is a problem (the run
    stops before sending); a listed object that cannot be one is skipped with its reason
    and the others go on."""
    plan = Plan(jobs=[])
    seen: set[str] = set()
    for item in inputs:
        model, prompt = pick_model_and_prompt(defaults.models, defaults.prompts,
                                              seed=defaults.choice_seed,
                                              name=item.source.relative)
        values = {**defaults.common, "model": model, "prompt": prompt, **item.overrides}
        try:
            params = validate_params(**values)
            check_known_family(params)
            defaults.check_model(params.model)
            defaults.check_loras(params)
            job = JobMessage.create(input=item.source.location, input_etag=item.source.etag,
                                    output_prefix=output, params=params, batch_id=batch_id,
                                    **asdict(defaults.controls))
        except (InvalidJob, ModelNotAllowed, LoraNotAllowed) as exc:
            if item.line is None:
                plan.skipped.append(_shorten(str(exc), 400))
            else:
                plan.problems.append(f"line {item.line}: {exc}")
            continue
        if job.job_id in seen:
            plan.duplicates += 1
            continue
        seen.add(job.job_id)
        plan.jobs.append(job)
    return plan


def derive_batch_id(*, source: str, output: S3Location, defaults: Defaults,
                    jobs_file_sha256: str | None = None) -> str:
    """A batch id that depends only on the source, the output and the parameters,
    so running the same enqueue again names the same batch."""
    canonical = json.dumps({
        "source": source, "output": output.uri, "models": defaults.models,
        "prompts": defaults.prompts, "common": defaults.common, "jobs": jobs_file_sha256,
    }, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:BATCH_ID_HEX_CHARS]
    return BATCH_ID_PREFIX + digest


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
