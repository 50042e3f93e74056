"""The job message: what a producer puts on the queue and a worker executes.

Messages are JSON with a ``schema_version``; ``JobMessage.model_json_schema()`` is the
published schema (``img2img-producer schema``) so any producer can write jobs.

Compatibility rule. ``schema_version`` is a major version:
- within one major version, fields are only ever added, optional with a default; a
  worker ignores fields it does not know (a newer producer's additions), and an older
  producer's messages, missing the newer optional fields, are still accepted;
- a change that alters what an existing field means, or adds a field an older worker
  must not ignore, bumps the major version; a worker refuses a message of a higher
  major version than its own (``UnsupportedSchemaVersion``) without running it, so it
  waits in the dead-letter queue until upgraded workers can take it (``redrive``).

Version 2 left ``steps``, ``guidance_scale``, ``max_side`` and ``scheduler`` unset to mean
"the model family's default", and added ``loras``: a version 1 worker would read the
unset fields as SD 1.5's defaults and ignore the adapters, so it must refuse these
messages. A version 1 message keeps its meaning here: its missing fields take version
1's defaults (``V1_DEFAULTS``), not the family's.

Types are strict on the wire: ``"4"`` is not a number of steps and ``true`` is not a
strength. Other producers get an error naming the field instead of a silent coercion.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.errors import InvalidJob, UnsupportedSchemaVersion
from contract.locations import S3Location, output_key, output_named_for
from contract.loras import MAX_LORAS_PER_JOB, LoraRef

SCHEMA_VERSION = 2
# What a version 1 message meant by leaving these out.
V1_DEFAULTS = {"steps": 25, "guidance_scale": 7.5, "max_side": 512, "scheduler": "dpmsolver++"}
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1
MAX_TIMEOUT_SECONDS = 24 * 60 * 60
JOB_ID_HEX_CHARS = 32


class OutputFormat(str, Enum):
    PNG = "png"
    JPG = "jpg"
    WEBP = "webp"

    @property
    def extension(self) -> str:
        return self.value

    @property
    def pil_format(self) -> str:
        return {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[self.value]

    @property
    def content_type(self) -> str:
        return {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[self.value]


_FAMILY_DEFAULT = "Unset: the model family's default (img2img-producer schema lists them)."
Scheduler = Literal["dpmsolver++", "euler", "euler-ancestral", "ddim", "pndm", "lcm", "model"]


class GenerationParams(BaseModel):
    """What to generate, independent of where the input comes from."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    model: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^\S+$")]
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
    negative_prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] = ""
    strength: Annotated[float, Field(gt=0.0, le=1.0)] = 0.75
    # Unset (None): the model family's default (contract.model_profiles), applied by the
    # worker once it knows the model.
    steps: Annotated[int | None, Field(ge=1, le=200, description=_FAMILY_DEFAULT)] = None
    guidance_scale: Annotated[float | None, Field(ge=0.0, le=30.0,
                                                  description=_FAMILY_DEFAULT)] = None
    seed: Annotated[int | None, Field(ge=0, le=MAX_SEED)] = None
    max_side: Annotated[int | None, Field(ge=64, le=2048, multiple_of=8, description=(
        "The long side the model sees. " + _FAMILY_DEFAULT))] = None
    output_format: OutputFormat = OutputFormat.PNG
    keep_size: bool = True
    scheduler: Annotated[Scheduler | None, Field(description=_FAMILY_DEFAULT)] = None
    loras: Annotated[tuple[LoraRef, ...], Field(max_length=MAX_LORAS_PER_JOB, description=(
        "LoRA adapters applied on the model for this job, each {ref, scale}; refs must "
        "match the fleet's IMG2IMG_ALLOWED_LORAS."))] = ()

    @field_validator("loras")
    @classmethod
    def _distinct_loras(cls, value: tuple[LoraRef, ...]) -> tuple[LoraRef, ...]:
        refs = [lora.ref for lora in value]
        if len(set(refs)) != len(refs):
            raise ValueError(f"each LoRA may appear once (got {refs})")
        return value

    @model_validator(mode="after")
    def _at_least_one_denoising_step(self) -> GenerationParams:
        # diffusers runs int(steps * strength) denoising steps; zero would be a no-op
        # that still costs a VAE round trip and returns a blurred copy of the input.
        # Unset steps are checked once the family's default is known.
        if self.steps is not None and int(self.steps * self.strength) < 1:
            raise ValueError(
                f"steps * strength must be at least 1 denoising step "
                f"(steps={self.steps}, strength={self.strength})"
            )
        return self

    def resolved(self) -> bool:
        """Whether every family default has been applied (contract.model_profiles)."""
        return None not in (self.steps, self.guidance_scale, self.max_side, self.scheduler)

    def effective_seed(self, job_id: str) -> int:
        """The explicit seed, else one derived from the job id (recorded in the result)."""
        return self.seed if self.seed is not None else seed_from_job_id(job_id)


class JobMessage(GenerationParams):
    """One image to transform: the SQS message body.

    Unknown fields are ignored and a newer major schema_version is refused: see the
    module's compatibility rule.
    """

    # Unknown fields are ignored, not rejected: see the compatibility rule above.
    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())

    schema_version: Annotated[int, Field(ge=1, le=SCHEMA_VERSION)] = SCHEMA_VERSION
    job_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{8,128}$")]
    batch_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
    input: S3Location
    input_etag: Annotated[str | None, Field(max_length=256)] = None
    output: Annotated[S3Location, Field(description=(
        "Where the image goes. Its file name must contain '.<job_id[:12]>.' (output_key "
        "derives '<prefix><input stem>.<job_id[:12]>.<ext>'); the result record is "
        "written next to it at '<output key>.json'."))]
    # Life cycle (optional; added within schema_version 1, so older messages stay valid).
    expires_at: Annotated[datetime | None, Field(description=(
        "UTC time after which the job is not run: received later, it ends as expired."))
    ] = None
    timeout_seconds: Annotated[int | None, Field(ge=1, le=MAX_TIMEOUT_SECONDS, description=(
        "A generation running longer is stopped between denoising steps and recorded as "
        "failed with error type Timeout."))] = None
    callback_url: Annotated[str | None, Field(max_length=2048, description=(
        "Where the job's end event is POSTed, if the fleet's IMG2IMG_ALLOWED_CALLBACKS "
        "admits it."))] = None

    @field_validator("expires_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("expires_at needs a time zone (UTC, e.g. 2026-01-01T00:00:00Z)")
        return value

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError(f"callback_url must be an http(s) URL (got {value!r})")
        return value

    @field_validator("output")
    @classmethod
    def _output_is_an_object(cls, value: S3Location) -> S3Location:
        if value.key.endswith("/"):
            raise ValueError(f"output must be an object key, not a prefix: {value.uri}")
        return value

    @model_validator(mode="after")
    def _output_named_after_the_job(self) -> JobMessage:
        # The output key carries the job id, so no message can name (and overwrite the
        # record of) another job's output: see ``output_key``.
        if not output_named_for(self.output.key, self.job_id):
            raise ValueError(
                f"output: the file name must contain '.{self.job_id[:12]}.' (the job id's "
                f"first 12 characters), as output_key() derives it (got {self.output.key!r})")
        return self

    @classmethod
    def create(
        cls,
        *,
        input: S3Location,
        input_etag: str | None,
        output_prefix: S3Location,
        params: GenerationParams,
        batch_id: str,
        expires_at: datetime | None = None,
        timeout_seconds: int | None = None,
        callback_url: str | None = None,
    ) -> JobMessage:
        """Build a job whose id and output key are derived from input and parameters;
        InvalidJob names what does not fit (an output key over S3's limit, say)."""
        job_id = derive_job_id(s3_input_identity(input, input_etag), params)
        shown = input.uri if len(input.uri) <= 120 else input.uri[:117] + "..."
        try:
            out = S3Location(
                bucket=output_prefix.bucket,
                key=output_key(output_prefix.key, input.key, job_id,
                               params.output_format.extension),
            )
        except ValidationError as exc:
            raise InvalidJob(f"{shown}: its output {describe_validation_error(exc)}") from None
        try:
            return cls(job_id=job_id, batch_id=batch_id, input=input, input_etag=input_etag,
                       output=out, expires_at=expires_at, timeout_seconds=timeout_seconds,
                       callback_url=callback_url, **params.model_dump())
        except ValidationError as exc:
            raise InvalidJob(f"{shown}: {describe_validation_error(exc)}") from None

    @property
    def params(self) -> GenerationParams:
        return GenerationParams(**self.model_dump(include=set(GenerationParams.model_fields)))

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


def s3_input_identity(location: S3Location, etag: str | None) -> str:
    """Identity of an S3 input: the same object content gives the same identity."""
    return f"{location.uri}#{(etag or '').strip(chr(34))}"


def derive_job_id(input_identity: str, params: GenerationParams) -> str:
    """A stable id from the input's identity and every parameter that shapes the output."""
    # No adapters: the id a job had before ``loras`` existed, so re-enqueuing is idempotent.
    dumped = params.model_dump(mode="json", exclude={"loras"} if not params.loras else None)
    canonical = json.dumps(
        {"input": input_identity, "params": dumped},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:JOB_ID_HEX_CHARS]


def seed_from_job_id(job_id: str) -> int:
    """A 63-bit seed from a job id, so a job without an explicit seed is reproducible."""
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:16], 16) & MAX_SEED


def describe_validation_error(exc: ValidationError,
                              names: Mapping[str, str] | None = None) -> str:
    """One line per problem, each naming the field (or what ``names`` calls it: a
    command line's flag) and the rejected value."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "message"
        field = (names or {}).get(field, field)
        value = err.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        if err["type"] == "missing":
            parts.append(f"{field}: required")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {msg} (got {shown})")
    return "; ".join(parts)


def parse_job(body: str | bytes | dict) -> JobMessage:
    """Parse and validate a message body, strictly typed; raise InvalidJob naming the bad
    fields, or UnsupportedSchemaVersion for a newer major version."""
    try:
        text = json.dumps(body) if isinstance(body, dict) else body
        job = JobMessage.model_validate_json(_version_1_filled(text), strict=True)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise InvalidJob(f"message body is not JSON: {exc.errors()[0]['msg']}") from None
        _refuse_newer_schema(exc)
        raise InvalidJob(describe_validation_error(exc)) from None
    except (TypeError, ValueError, RecursionError) as exc:  # json.dumps of odd objects
        raise InvalidJob(f"message body is not a JSON object: {exc}") from None
    return job


def _version_1_filled(text: str | bytes) -> str | bytes:
    """A version 1 body with ``V1_DEFAULTS`` where it left them out (it meant SD 1.5's
    values, not the family's); any other body as it came, for the parser to judge."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return text
    if (isinstance(data, dict) and data.get("schema_version") == 1
            and not isinstance(data["schema_version"], bool)
            and any(name not in data for name in V1_DEFAULTS)):
        return json.dumps({**V1_DEFAULTS, **data})
    return text


def unknown_fields(data: dict) -> list[str]:
    """Top-level fields of a message that this version of the contract does not know."""
    return sorted(set(data) - set(JobMessage.model_fields))


def _refuse_newer_schema(exc: ValidationError) -> None:
    for err in exc.errors():
        value = err.get("input")
        if (err["loc"] == ("schema_version",) and isinstance(value, int)
                and not isinstance(value, bool) and value > SCHEMA_VERSION):
            raise UnsupportedSchemaVersion(
                f"schema_version {value} is newer than this worker's ({SCHEMA_VERSION}); "
                "upgrade the workers, then redrive the message") from None


def validate_params(*, field_names: Mapping[str, str] | None = None,
                    **values: object) -> GenerationParams:
    """Build GenerationParams from user input; raise InvalidJob naming the bad fields
    (as ``field_names`` calls them, when given: a command line names its flags)."""
    try:
        return GenerationParams(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise InvalidJob(describe_validation_error(exc, field_names)) from None


def job_json_schema() -> dict:
    return JobMessage.model_json_schema()
