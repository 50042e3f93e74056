"""The producer's settings: ``IMG2IMG_*`` variables (and ``.env``) on top of the common ones."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from contract.settings import CommonSettings


class ProducerSettings(CommonSettings):
    """Build with ``load_settings(ProducerSettings)`` where the program starts."""

    bucket: str | None = None
    upload_prefix: str = "inputs/"
    output_prefix: str = "outputs/"
    concurrency: Annotated[int, Field(ge=1, le=64)] = 8
