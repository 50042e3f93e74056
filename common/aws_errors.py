"""The one classifier of AWS errors: what is transient, what is missing, what is denied.

Every caller (S3 storage, the SQS consumer, the producer's sender and CLI) asks here,
so "transient" means the same thing everywhere. Transient covers every network error
botocore can raise, including a body cut mid-stream while it is being read
(``ResponseStreamingError``, ``IncompleteReadError``), which botocore's own retries do
not cover because they end when the response headers arrive.
"""

from __future__ import annotations

import http.client

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as Urllib3Error

# "Slow down", whether or not the service marks it as the sender's fault.
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "SlowDown",
    "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "KmsThrottled", "KMS.ThrottlingException",
})
# The service's trouble, not the request's.
SERVER_CODES = frozenset({
    "InternalError", "InternalFailure", "ServiceUnavailable", "RequestTimeout",
    "RequestTimeoutException", "ConditionalRequestConflict", "OperationAborted",
    "500", "502", "503", "504",
})
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "403",
                                 "AllAccessDisabled"})
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
# Waiting will not fix these: a missing queue, bad credentials, no permission.
CONFIGURATION_CODES = frozenset({
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "InvalidAddress",
    "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
    "InvalidAccessKeyId", "ExpiredToken", "ExpiredTokenException",
    "NoSuchBucket", "InvalidBucketName", *ACCESS_DENIED_CODES,
})
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    BotoConnectionError,  # EndpointConnectionError, ConnectTimeoutError, proxy, SSL
    IncompleteReadError,  # fewer body bytes than Content-Length
    Urllib3Error,  # anything urllib3 raises that botocore did not wrap
    http.client.HTTPException,  # IncompleteRead and friends
    ConnectionError,  # the builtin: reset, refused, aborted
    TimeoutError,
)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError ('' for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


def is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, _NETWORK_ERRORS)


def is_throttling(exc: BaseException) -> bool:
    return error_code(exc) in THROTTLING_CODES


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: network trouble, throttling, a server error."""
    if is_network_error(exc):
        return True
    if isinstance(exc, ClientError):
        code = error_code(exc)
        return code in THROTTLING_CODES or code in SERVER_CODES or http_status(exc) >= 500
    return False


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def is_access_denied(exc: BaseException) -> bool:
    return error_code(exc) in ACCESS_DENIED_CODES


def is_precondition_failed(exc: BaseException) -> bool:
    return error_code(exc) in PRECONDITION_CODES


def is_configuration_error(exc: BaseException) -> bool:
    """No such queue or bucket, bad credentials, no permission: retrying cannot help."""
    return error_code(exc) in CONFIGURATION_CODES


def is_aws_error(exc: BaseException) -> bool:
    return isinstance(exc, ClientError | BotoCoreError)


def describe(exc: BaseException) -> str:
    """``Operation: Code: message`` for a ClientError, else the exception's text. The
    bucket is named when S3 says which one does not exist, and an HTML page an endpoint
    sent instead of an AWS error is not repeated."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        message = str(error.get("Message") or exc)
        if "<html" in message.lower() or message.lstrip().startswith("<!"):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            message = (f"the endpoint answered HTTP {status} with a web page, not an AWS "
                       "answer (is the operation supported there?)")
        if error_code(exc) == "NoSuchBucket" and error.get("BucketName"):
            message = f"no bucket {error['BucketName']!r}: {message}"
        return f"{exc.operation_name}: {error_code(exc)}: {message}"
    return f"{type(exc).__name__}: {exc}"
