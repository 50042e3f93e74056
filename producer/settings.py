"""The producer's settings: ``IMG2IMG_*`` variables (and ``.env``) on top of the common ones."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from contract.settings import CommonSettings, split_list
from infra.config import FleetConfig


class ProducerSettings(CommonSettings):
    """Build with ``load_settings(ProducerSettings)`` where the program starts."""

    bucket: str | None = None
    upload_prefix: str = "inputs/"
    output_prefix: str = "outputs/"
    concurrency: Annotated[int, Field(ge=1, le=64)] = 8
    # The workers' IMG2IMG_ALLOWED_MODELS, when set for the producer too: enqueue then
    # refuses models the fleet would refuse. Unset: no check here (the workers still do).
    allowed_models: Annotated[list[str] | None, NoDecode] = None
    # The fleet enqueue starts (the stack's ClusterName, ServiceName and
    # AutoScalingGroupName outputs); with cluster and service set, enqueue starts the
    # workers itself (producer/fleet_start.py) unless told --no-start.
    cluster: str | None = None
    service: str | None = None
    gpu_group: str | None = None
    # The stack's maxTasks and backlogPerTask: the start tiers.
    max_tasks: Annotated[int, Field(ge=1)] = FleetConfig.model_fields["max_tasks"].default
    backlog_per_task: Annotated[int, Field(ge=1)] = (
        FleetConfig.model_fields["backlog_per_task"].default)

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _split_allowed(cls, value: Any) -> Any:
        return split_list(value)
