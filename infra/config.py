"""The fleet's deployment settings, read from CDK context and validated before any synth.

Every field is a camelCase context key (``maxTasks``, ``taskMemoryMiB``), set in
infra/cdk.json (JSON values) or with ``-c key=value`` (strings): both are accepted, and
every error names the context key. An unknown key that looks like one of ours (a plain
identifier such as ``maxTask``) is an error; keys CDK itself keeps in the context
(``aws:cdk:...``, ``@aws-cdk/...`` feature flags, ``availability-zones:...`` lookups,
``acknowledged-issue-numbers``) all contain ``:``, ``/``, ``@`` or ``-`` and are ignored.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from infra.instance_types import GPU_FAMILIES, HOST_RESERVED_MIB, family, instance_memory_mib

# SQS caps a message's visibility timeout at 12 hours.
SQS_MAX_VISIBILITY_SECONDS = 12 * 60 * 60
# Spot gives a 2-minute interruption notice. The agent polls for it every second and sets
# its instance DRAINING, then the service scheduler stops the task: keep this much of the
# notice for that, so SIGKILL (at stopTimeout after SIGTERM) comes before the reclaim.
SPOT_NOTICE_SECONDS = 120
SPOT_DRAIN_LEAD_SECONDS = 30
# Between the worker's stop deadline and ECS's SIGKILL: release messages, flush deletes.
STOP_MARGIN_SECONDS = 15
# Receives before the DLQ. SIGTERM releases (scale-in, deployments, Spot reclaims) count
# as receives too, so the allowance covers transient failures plus interruptions.
SPOT_MIN_RECEIVE_COUNT = 5
Capacity = Literal["on-demand", "spot"]
# Fields whose default depends on the capacity type (not in cdk.json for that reason).
CAPACITY_DEFAULTS: dict[str, dict[Capacity, Any]] = {
    # Spot draws from more pools (each type and AZ is one), so fewer interruptions and
    # fewer "no capacity" launches; the bigger sizes still hold one GPU (one task).
    "instance_types": {"on-demand": ("g5.xlarge", "g6.xlarge"),
                       "spot": ("g5.xlarge", "g6.xlarge", "g5.2xlarge", "g6.2xlarge",
                                "g6e.xlarge")},
    "max_receive_count": {"on-demand": 5, "spot": 10},
    "stop_timeout": {"on-demand": 120, "spot": SPOT_NOTICE_SECONDS - SPOT_DRAIN_LEAD_SECONDS},
    "stop_deadline": {"on-demand": 100, "spot": 70},
}
# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 180, 365)
DEFAULT_STACK_NAME = "Img2ImgFleet"

_S3_PREFIX_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]/(\S+/)?$")
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[\w/+=.@-]+$")
_SECRET_NAME = re.compile(r"^[\w/+=.@-]{1,512}$")
# What one of our keys looks like; CDK's own keys never match (see the module docstring).
_OUR_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_BOOL = TypeAdapter(bool)


class ContextError(ValueError):
    """Invalid CDK context; the message names every offending key."""


def context_key(field_name: str) -> str:
    """``task_memory_mib`` -> ``taskMemoryMiB``: the context key of a field."""
    head, *rest = field_name.split("_")
    special = {"mib": "MiB", "gib": "GiB"}
    return head + "".join(special.get(p, p.capitalize()) for p in rest)


def _comma_list(value: Any) -> list[str]:
    """A JSON list (cdk.json) or a comma-separated string (``-c``)."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def _prefix(value: Any) -> str:
    text = str(value).strip().lstrip("/")
    return text if not text or text.endswith("/") else text + "/"


class FleetConfig(BaseModel):
    """Deployment settings; each field is the context key ``context_key(name)``."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=context_key,
                              populate_by_name=True, str_strip_whitespace=True)

    stack_name: str = Field(DEFAULT_STACK_NAME, pattern=r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
    spot: bool = False
    # Filled by capacity type when not given (CAPACITY_DEFAULTS).
    instance_types: tuple[str, ...]
    max_tasks: int = Field(4, ge=1)
    backlog_per_task: int = Field(32, ge=1)
    # Filled by capacity type when not given (CAPACITY_DEFAULTS).
    max_receive_count: int = Field(ge=1, le=1000)
    # The worker extends visibility every third of the timeout: keep that >= 10 s.
    visibility_timeout: int = Field(120, ge=30, le=SQS_MAX_VISIBILITY_SECONDS)
    stop_timeout: int = Field(gt=0)
    stop_deadline: int = Field(gt=0)
    input_prefix: str = "inputs/"
    output_prefix: str = "outputs/"
    uploads_prefix: str = ""
    output_expiration_days: int = Field(0, ge=0)
    oldest_message_alarm_seconds: int = Field(3600, ge=60)
    alarm_email: str = ""
    image_tag: str = Field("v1", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    default_models: str = "sd15"
    models_uri: str = ""
    allowed_models: str = ""
    task_memory_mib: int = Field(12288, gt=0)
    task_memory_limit_mib: int = Field(14336, gt=0)
    task_cpu: int = Field(3072, ge=128)
    root_volume_gib: int = Field(100, ge=1)
    log_retention_days: int = 30
    max_azs: int = Field(3, ge=1, le=6)
    min_driver_version: int = Field(580, ge=0)
    # Stopped GPU instances kept ready (image pulled) for a fast start; 0: no warm pool.
    # Auto Scaling warm pools take one on-demand instance type (no mixed instances).
    warm_pool_size: int = Field(0, ge=0)
    # Jobs that should not wait behind the main queue: a second queue with its own DLQ.
    priority_queue: bool = False
    # The events topic (always there) and who hears it.
    events_email: str = ""
    events_queue: bool = False
    webhook_url: str = ""
    webhook_secret: str = ""  # a Secrets Manager secret's name or ARN
    # IMG2IMG_GPU_PRICE_PER_HOUR for cost per image; CDK cannot know the instance's price.
    gpu_price_per_hour: float | None = Field(None, ge=0)

    # -- reading values as cdk.json and `-c` give them --------------------------------

    @model_validator(mode="before")
    @classmethod
    def _capacity_defaults(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        try:
            spot = _BOOL.validate_python(data.get("spot", False))
        except ValidationError:
            spot = False  # the field's own validation reports it
        capacity: Capacity = "spot" if spot else "on-demand"
        filled = dict(data)
        for name, defaults in CAPACITY_DEFAULTS.items():
            if filled.get(name) is None and filled.get(context_key(name)) is None:
                filled.pop(name, None)
                filled[context_key(name)] = defaults[capacity]
        return filled

    @field_validator("instance_types", mode="before")
    @classmethod
    def _split_instance_types(cls, value: Any) -> tuple[str, ...]:
        return tuple(_comma_list(value))

    @field_validator("default_models", "allowed_models", mode="before")
    @classmethod
    def _join_models(cls, value: Any) -> str:
        return ",".join(_comma_list(value))

    @field_validator("input_prefix", "output_prefix", "uploads_prefix", mode="before")
    @classmethod
    def _normalize_prefix(cls, value: Any) -> str:
        return _prefix(value)

    @field_validator("models_uri", mode="before")
    @classmethod
    def _normalize_models_uri(cls, value: Any) -> str:
        text = str(value).strip()
        return _prefix(text) if text else ""

    @field_validator("gpu_price_per_hour", mode="before")
    @classmethod
    def _empty_price(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    # -- single values -----------------------------------------------------------------

    @field_validator("instance_types")
    @classmethod
    def _gpu_instance_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one instance type")
        bad = [t for t in value if family(t) not in GPU_FAMILIES]
        if bad:
            raise ValueError(f"{bad} not in the GPU families {GPU_FAMILIES}")
        return value

    @field_validator("input_prefix", "output_prefix")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("models_uri")
    @classmethod
    def _s3_prefix_uri(cls, value: str) -> str:
        if value and not _S3_PREFIX_URI.match(value):
            raise ValueError("an s3://bucket/prefix/ URI")
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"one of {LOG_RETENTION_DAYS}")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _https_url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https://[^\s/$.?#][^\s]*", value):
            raise ValueError("an https:// URL")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_reference(cls, value: str) -> str:
        if value and not (_SECRET_ARN.match(value) or _SECRET_NAME.match(value)):
            raise ValueError("a Secrets Manager secret name or ARN")
        return value

    @field_validator("alarm_email", "events_email")
    @classmethod
    def _email(cls, value: str) -> str:
        if value and "@" not in value:
            raise ValueError("an e-mail address")
        return value

    # -- values that must fit together -----------------------------------------------

    @model_validator(mode="after")
    def _consistent(self) -> FleetConfig:
        problems = [*self._timing_problems(), *self._memory_problems()]
        prefixes = [p for p in (self.input_prefix, self.output_prefix, self.uploads_prefix)
                    if p]
        problems += [f"inputPrefix/outputPrefix/uploadsPrefix: prefixes must not nest: "
                     f"{a!r} is inside {b!r}"
                     for a in prefixes for b in prefixes if a is not b and a.startswith(b)]
        if self.warm_pool_size and self.spot:
            problems.append("warmPoolSize needs on-demand capacity: Auto Scaling warm pools "
                            "do not take Spot instances (set spot=false or warmPoolSize=0)")
        if self.webhook_secret and not self.webhook_url:
            problems.append("webhookSecret is set but webhookUrl is empty: the secret signs "
                            "webhook calls")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _timing_problems(self) -> list[str]:
        problems = []
        # The worker must give up the batch, release and exit before ECS sends SIGKILL.
        if self.stop_deadline > self.stop_timeout - STOP_MARGIN_SECONDS:
            problems.append(
                f"stopDeadline ({self.stop_deadline}) must be at least {STOP_MARGIN_SECONDS} s "
                f"below stopTimeout ({self.stop_timeout}): ECS kills the container at "
                "stopTimeout")
        spot_limit = SPOT_NOTICE_SECONDS - SPOT_DRAIN_LEAD_SECONDS
        if self.spot and self.stop_timeout > spot_limit:
            problems.append(
                f"stopTimeout ({self.stop_timeout}) must be at most {spot_limit} s with spot: "
                f"the instance is reclaimed {SPOT_NOTICE_SECONDS} s after the notice, and "
                "draining starts some seconds into it")
        if self.spot and self.max_receive_count < SPOT_MIN_RECEIVE_COUNT:
            problems.append(
                f"maxReceiveCount ({self.max_receive_count}) must be >= "
                f"{SPOT_MIN_RECEIVE_COUNT} with spot: every Spot reclaim releases the jobs a "
                "task holds and counts as a receive")
        return problems

    def _memory_problems(self) -> list[str]:
        if self.task_memory_limit_mib <= self.task_memory_mib:
            return [f"taskMemoryLimitMiB ({self.task_memory_limit_mib}) must be above "
                    f"taskMemoryMiB ({self.task_memory_mib}), the memory reserved for "
                    "placement"]
        known = [m for m in map(instance_memory_mib, self.instance_types) if m]
        if known and self.task_memory_limit_mib > min(known) - HOST_RESERVED_MIB:
            return [f"taskMemoryLimitMiB ({self.task_memory_limit_mib}) must leave "
                    f"{HOST_RESERVED_MIB} MiB of the smallest instance type's {min(known)} "
                    "MiB to the host"]
        return []

    # -- derived values ----------------------------------------------------------------

    @property
    def capacity(self) -> Capacity:
        return "spot" if self.spot else "on-demand"

    @property
    def worker_allowed_models(self) -> str | None:
        """IMG2IMG_ALLOWED_MODELS, or None for the worker's default (its built-in aliases).

        With ``modelsUri`` the fleet may load every model under it, plus ``allowedModels``
        (by default ``defaultModels``).
        """
        listed = self.allowed_models or (self.default_models if self.models_uri else "")
        patterns = [p for p in listed.split(",") if p]
        if self.models_uri:
            patterns.append(self.models_uri + "*")
        return ",".join(patterns) or None

    @property
    def heartbeat_seconds(self) -> float:
        """What the worker will use: a third of the visibility timeout."""
        return self.visibility_timeout / 3

    # -- from CDK context --------------------------------------------------------------

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> FleetConfig:
        """Validate every key of ours in ``context`` (e.g. ``node.get_all_context()``)."""
        ours = {k: v for k, v in context.items() if _OUR_KEY.match(k)}
        unknown = sorted(set(ours) - set(CONTEXT_KEYS))
        if unknown:
            raise ContextError("; ".join(_unknown_key_message(k) for k in unknown)
                               + f". Known keys: {', '.join(CONTEXT_KEYS)}")
        try:
            return cls.model_validate({k: v for k, v in ours.items() if v is not None})
        except ValidationError as exc:
            raise ContextError("invalid context: " + "; ".join(
                _error_message(e) for e in exc.errors())) from None


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, CONTEXT_KEYS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown context key {key!r}{hint}"


def _error_message(error: Any) -> str:
    """``maxTasks: Input should be ... (got '0')``; model-level errors name their keys."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message
    return f"{error['loc'][0]}: {message} (got {error['input']!r})"


CONTEXT_KEYS: tuple[str, ...] = tuple(context_key(name) for name in FleetConfig.model_fields)
