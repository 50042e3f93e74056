"""Shared fixtures: a real moto server over HTTP, fleet resources, the tiny model cache,
the model families."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.aws import s3_client, sqs_client
from local_fleet.embedded_aws import FleetResources, create_fleet_resources, start_moto_server


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole run, so the tiny model is built once."""
    cache = Path(os.environ.get("IMG2IMG_TEST_MODEL_CACHE")
                 or tmp_path_factory.mktemp("model-cache"))
    return cache


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{build name: folder}``: one shrunk random-weight model per family
    (tests/support/model_families.py), built once for the run, a few seconds in all."""
    from tests.support.model_families import FAMILY_BUILDS, build_family

    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, root / "models" / name) for name in FAMILY_BUILDS}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server, endpoint = start_moto_server()
    yield endpoint
    server.stop()


@pytest.fixture
def fleet(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> FleetResources:
    """A fresh bucket, queue and DLQ per test (unique names keep queues shallow)."""
    for key in ("AWS_PROFILE", "IMG2IMG_QUEUE_URL"):
        monkeypatch.delenv(key, raising=False)
    name = "t" + uuid.uuid4().hex[:12]
    resources = create_fleet_resources(
        s3_client(endpoint_url=moto_endpoint), sqs_client(endpoint_url=moto_endpoint),
        endpoint_url=moto_endpoint, bucket=f"bkt-{name}", queue_name=f"q-{name}",
        max_receive_count=2, visibility_timeout=30)
    for key, value in resources.environment().items():
        monkeypatch.setenv(key, value)
    return resources


@pytest.fixture
def s3(fleet: FleetResources):
    return s3_client(endpoint_url=fleet.endpoint_url)


@pytest.fixture
def sqs(fleet: FleetResources):
    return sqs_client(endpoint_url=fleet.endpoint_url)
