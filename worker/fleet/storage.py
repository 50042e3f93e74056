"""S3 reads and writes for the worker, with bounded retries on transient errors only."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from common.aws_errors import (
    error_code,
    is_access_denied,
    is_not_found,
    is_precondition_failed,
    is_transient,
)
from contract.errors import InputNotFound, LocationNotAllowed, StorageUnavailable
from contract.locations import S3Location
from worker.fleet.object_clients import BotocoreObjects, ObjectClient, StoredObject

log = logging.getLogger(__name__)

T = TypeVar("T")


class S3Storage:
    """Every call is retried up to ``attempts`` times with jittered backoff when the
    error is transient; what still fails becomes StorageUnavailable (transient), so the
    message is released and retried later or redriven to the DLQ.

    Reading a body happens inside the retried call, so a body cut mid-stream is
    retried like any other network error.
    """

    def __init__(self, s3: Any, *, objects: ObjectClient | None = None, attempts: int = 4,
                 max_backoff: float = 4.0) -> None:
        self.s3 = s3  # a boto3 client: listings, and the object requests by default
        self.objects = objects or BotocoreObjects(s3)
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

    def read_object(self, location: S3Location) -> StoredObject:
        """The object's bytes, metadata and ETag; InputNotFound / LocationNotAllowed."""
        def get() -> StoredObject:
            try:
                return self.objects.get(location.bucket, location.key)
            except Exception as exc:
                if is_not_found(exc):
                    raise InputNotFound(f"{location.uri}: no such object") from None
                if is_access_denied(exc):
                    raise LocationNotAllowed(f"{location.uri}: access denied") from None
                raise
        return self._call(f"GET {location.uri}", get)

    def read(self, location: S3Location) -> bytes:
        return self.read_object(location).body

    def read_json(self, location: S3Location) -> tuple[dict | None, str | None]:
        """The object parsed as JSON and its ETag, or (None, None) when it does not
        exist. A body that is not a JSON object reads as an empty dict."""
        def get() -> tuple[dict | None, str | None]:
            try:
                stored = self.objects.get(location.bucket, location.key)
            except Exception as exc:
                if is_not_found(exc):
                    return None, None
                raise
            try:
                data = json.loads(stored.body)
            except ValueError:
                data = {}
            return (data if isinstance(data, dict) else {}), stored.etag
        return self._call(f"GET {location.uri}", get)

    def head_metadata(self, location: S3Location) -> dict[str, str] | None:
        """The object's user metadata, or None when it does not exist."""
        def head() -> dict[str, str] | None:
            try:
                return self.objects.head(location.bucket, location.key)
            except Exception as exc:
                if is_not_found(exc):
                    return None
                raise
        return self._call(f"HEAD {location.uri}", head)

    def put_if_absent(self, location: S3Location, data: bytes, content_type: str,
                      metadata: dict[str, str] | None = None) -> bool:
        """Conditional PUT (If-None-Match: *); False when the object already exists."""
        return self._conditional_put(location, data, content_type, metadata,
                                     {"if_none_match": True}) is not None

    def put_if_match(self, location: S3Location, data: bytes, content_type: str,
                     etag: str) -> bool:
        """PUT only over the version with ``etag``; False when it changed meanwhile."""
        return self._conditional_put(location, data, content_type, None,
                                     {"if_match": etag}) is not None

    def replace(self, location: S3Location, data: bytes, content_type: str,
                etag: str | None) -> str | None:
        """PUT over the version with ``etag`` (None: only where there is no object yet);
        the new version's ETag, or None when the object is not (or no longer) that."""
        condition: dict[str, Any] = {"if_match": etag} if etag else {"if_none_match": True}
        return self._conditional_put(location, data, content_type, None, condition)

    def _conditional_put(self, location: S3Location, data: bytes, content_type: str,
                         metadata: dict[str, str] | None,
                         condition: dict[str, Any]) -> str | None:
        def put() -> str | None:
            try:
                return self.objects.put(location.bucket, location.key, data, content_type,
                                        metadata, **condition)
            except Exception as exc:
                if is_precondition_failed(exc):
                    return None
                if "if_match" in condition and error_code(exc) == "NoSuchKey":
                    return None  # the version to replace was deleted meanwhile
                raise
        return self._call(f"PUT {location.uri}", put)

    def put(self, location: S3Location, data: bytes, content_type: str) -> None:
        self._call(f"PUT {location.uri}", lambda: self.objects.put(
            location.bucket, location.key, data, content_type))

    def delete(self, location: S3Location) -> None:
        self._call(f"DELETE {location.uri}", lambda: self.objects.delete(
            location.bucket, location.key))
