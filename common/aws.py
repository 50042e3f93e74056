"""boto3 clients, created on demand (never at import time), and who retries what.

``AWS_ENDPOINT_URL`` and ``AWS_REGION``/``AWS_PROFILE`` are honoured the way boto3
reads them; an explicit ``endpoint_url`` (the embedded fleet) overrides.

One retry layer per call, and the code says which:
- the worker's S3 calls (``worker.fleet.storage.S3Storage``): tenacity, 4 tries, on
  ``common.aws_errors.is_transient`` (body reads included); the client itself does not
  retry (``max_attempts=1``);
- the worker's SQS calls (``worker.fleet.consumer``): botocore's standard mode, 5 tries;
- the producer's S3 and SQS calls: botocore's adaptive mode, 5 tries, with client-side
  rate limiting;
- SendMessageBatch entries that SQS refused (a partial failure botocore does not see):
  ``producer.sending``, those entries only.

The worker's S3 client does not retry in botocore because a body cut mid-stream is only
seen after botocore has returned, so tenacity must cover it anyway; doing both would
multiply into 20 HTTP attempts per call.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

import boto3
from botocore.config import Config

RetryMode = Literal["standard", "adaptive"]
DEFAULT_ATTEMPTS = 5
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60  # above SQS's 20 s long poll


def client_config(max_pool_connections: int = 32, max_attempts: int = DEFAULT_ATTEMPTS,
                  mode: RetryMode = "adaptive") -> Config:
    return Config(retries={"max_attempts": max_attempts, "mode": mode},
                  max_pool_connections=max_pool_connections,
                  connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S)


# https://sqs.<region>.amazonaws.com[.cn]/<account>/<name>, and the legacy
# https://<region>.queue.amazonaws.com/<account>/<name>.
_QUEUE_URL_REGION = re.compile(
    r"^https://(?:sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?|([a-z0-9-]+)\.queue\."
    r"amazonaws\.com)/")


def region_of_queue_url(url: str) -> str | None:
    """The region an SQS queue URL names, None for other URLs (an emulator's)."""
    match = _QUEUE_URL_REGION.match(url)
    return (match.group(1) or match.group(2)) if match else None


def default_region_from_queue(queue_url: str | None) -> None:
    """When no region is configured where boto3 looks (variables, profile), use the
    queue URL's, so a queue URL alone is enough."""
    region = region_of_queue_url(queue_url) if queue_url else None
    if region and make_session().region_name is None:
        os.environ["AWS_DEFAULT_REGION"] = region


def make_session() -> boto3.session.Session:
    return boto3.session.Session(region_name=os.environ.get("AWS_REGION")
                                 or os.environ.get("AWS_DEFAULT_REGION") or None)


def client(service: str, session: boto3.session.Session | None = None, *,
           endpoint_url: str | None = None, max_pool_connections: int = 32,
           max_attempts: int = DEFAULT_ATTEMPTS, mode: RetryMode = "adaptive") -> Any:
    """A boto3 client; ``max_attempts`` is botocore's total tries (1: no retries)."""
    session = session or make_session()
    return session.client(service, endpoint_url=endpoint_url,
                          config=client_config(max_pool_connections, max_attempts, mode))


def s3_client(session: boto3.session.Session | None = None, **options: Any) -> Any:
    return client("s3", session, **options)


def sqs_client(session: boto3.session.Session | None = None, **options: Any) -> Any:
    return client("sqs", session, **options)
