"""S3 reads and writes for the worker, with bounded retries on transient errors only."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from contract.errors import InputNotFound, LocationNotAllowed, StorageUnavailable
from contract.locations import S3Location

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "SlowDown", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable",
    "RequestLimitExceeded", "ConditionalRequestConflict", "500", "502", "503", "504",
})
_NETWORK_ERRORS = (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError,
                   ConnectTimeoutError)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _NETWORK_ERRORS):
        return True
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in _TRANSIENT_CODES or status >= 500
    return False


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Storage:
    """Every call is retried up to ``attempts`` times with jittered backoff when the
    error is transient; what still fails becomes StorageUnavailable (transient), so the
    message is released and retried later or redriven to the DLQ."""

    def __init__(self, s3: Any, *, attempts: int = 4, max_backoff: float = 4.0) -> None:
        self.s3 = s3
        self._attempts = attempts
        self._max_backoff = max_backoff

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_random_exponential(multiplier=0.1, max=self._max_backoff),
            retry=retry_if_exception(is_transient),
            reraise=True,
            before_sleep=lambda state: log.info("retrying %s after %r", what,
                                                state.outcome.exception()),
        )
        try:
            return retrying(fn)
        except Exception as exc:
            if is_transient(exc):
                raise StorageUnavailable(f"{what}: {exc}") from exc
            raise

    def read(self, location: S3Location) -> bytes:
        def get() -> bytes:
            try:
                return self.s3.get_object(Bucket=location.bucket, Key=location.key)[
                    "Body"].read()
            except ClientError as exc:
                code = _code(exc)
                if code in ("NoSuchKey", "404", "NoSuchBucket"):
                    raise InputNotFound(f"{location.uri}: no such object") from None
                if code in ("AccessDenied", "403"):
                    raise LocationNotAllowed(f"{location.uri}: access denied") from None
                raise
        return self._call(f"GET {location.uri}", get)

    def put_if_absent(self, location: S3Location, data: bytes, content_type: str,
                      metadata: dict[str, str] | None = None) -> bool:
        """Conditional PUT (If-None-Match: *); False when the object already exists."""
        def put() -> bool:
            try:
                self.s3.put_object(Bucket=location.bucket, Key=location.key, Body=data,
                                   ContentType=content_type, IfNoneMatch="*",
                                   Metadata=metadata or {})
                return True
            except ClientError as exc:
                if _code(exc) in ("PreconditionFailed", "412"):
                    return False
                raise
        return self._call(f"PUT {location.uri}", put)

    def put(self, location: S3Location, data: bytes, content_type: str) -> None:
        self._call(f"PUT {location.uri}", lambda: self.s3.put_object(
            Bucket=location.bucket, Key=location.key, Body=data, ContentType=content_type))

    def read_json(self, location: S3Location) -> dict | None:
        """The object parsed as JSON, or None when it does not exist."""
        def get() -> dict | None:
            try:
                body = self.s3.get_object(Bucket=location.bucket, Key=location.key)["Body"]
            except ClientError as exc:
                if _code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
            return json.loads(body.read())
        return self._call(f"GET {location.uri}", get)
