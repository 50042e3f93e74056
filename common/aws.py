"""boto3 clients, created on demand (never at import time).

``AWS_ENDPOINT_URL`` and ``AWS_REGION``/``AWS_PROFILE`` are honoured the way boto3
reads them; an explicit ``endpoint_url`` (the embedded fleet) overrides.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

# botocore's own retries: adaptive mode backs off on throttling across threads.
_RETRIES = {"max_attempts": 5, "mode": "adaptive"}


def client_config(max_pool_connections: int = 32, max_attempts: int | None = None) -> Config:
    retries = dict(_RETRIES) if max_attempts is None else {**_RETRIES,
                                                           "max_attempts": max_attempts}
    return Config(retries=retries, max_pool_connections=max_pool_connections,
                  connect_timeout=10, read_timeout=60)


def make_session() -> boto3.session.Session:
    return boto3.session.Session(region_name=os.environ.get("AWS_REGION")
                                 or os.environ.get("AWS_DEFAULT_REGION") or None)


def client(service: str, session: boto3.session.Session | None = None, *,
           endpoint_url: str | None = None, max_pool_connections: int = 32,
           max_attempts: int | None = None) -> Any:
    """A boto3 client; ``max_attempts`` overrides botocore's retry count (1: no retries)."""
    session = session or make_session()
    return session.client(service, endpoint_url=endpoint_url,
                          config=client_config(max_pool_connections, max_attempts))


def s3_client(session: boto3.session.Session | None = None, **options: Any) -> Any:
    return client("s3", session, **options)


def sqs_client(session: boto3.session.Session | None = None, **options: Any) -> Any:
    return client("sqs", session, **options)
