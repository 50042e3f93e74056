"""Settings both sides read: ``IMG2IMG_*`` variables and an optional ``.env`` file.

List-valued settings take a comma-separated string (``a,b``) or a JSON list. Nothing is
read at import time: build the object where the program starts (``load_settings``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.errors import InvalidJob

ENV_PREFIX = "IMG2IMG_"

DEFAULT_PROMPTS = [
    "in the style of picasso",
    "an oil painting in the style of van gogh",
    "a watercolor illustration",
    "a detailed pencil sketch",
    "cyberpunk city at night, neon lights",
    "a ukiyo-e woodblock print",
]

CommaList = Annotated[list[str], NoDecode]


def split_list(value: Any) -> Any:
    """'a, b' -> ['a', 'b']; a JSON list string is parsed; lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class CommonSettings(BaseSettings):
    """What the producer and the worker both need."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True,
        protected_namespaces=(),
    )

    queue_url: str | None = None
    # The high-priority job queue: producers send --priority high jobs there; workers
    # ask it first (worker/fleet/consumer.py states the fair-share rule).
    priority_queue_url: str | None = None
    default_models: CommaList = ["sd15"]
    default_prompts: CommaList = DEFAULT_PROMPTS

    @field_validator("default_models", "default_prompts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return split_list(value)


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], *, flags: Mapping[str, str] | None = None,
                  **overrides: Any) -> S:
    """Build settings, turning a validation error into one that names the variable, or
    the flag (``flags``: field -> flag) when the value came from a command line's flag."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a check across fields: its message names the variables
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            field = str(err["loc"][0])
            name = ((flags or {}).get(field) if field in overrides else None) or (
                ENV_PREFIX + "_".join(str(p) for p in err["loc"]).upper())
            problems.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


class SettingsError(InvalidJob):
    """The configuration is invalid; the message names each bad variable."""
