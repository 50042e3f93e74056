"""Error classes shared by producer and worker.

Every failure a job can meet is either permanent (retrying cannot help: write a failed
result record and delete the message) or transient (retry, then release the message so
SQS redelivers it and, after maxReceiveCount, redrives it to the DLQ). The class name is
what a failed result record carries as ``error.type``.
"""

from __future__ import annotations


class Img2ImgError(Exception):
    """Base class of every error the project raises on purpose."""

    permanent: bool = True


class PermanentError(Img2ImgError):
    """Retrying cannot help."""

    permanent = True


class TransientError(Img2ImgError):
    """Worth retrying: throttling, 5xx, timeouts, a busy device.

    ``retry_after`` says when (seconds; 0: at once), as arq's ``Retry(defer=...)``
    does; None leaves it to the worker's backoff by receive count.
    """

    permanent = False

    def __init__(self, message: str = "", *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Interrupted(TransientError):
    """The job was stopped before its end by a shutdown: retry at once elsewhere."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message, retry_after=0)


class Unrecordable(TransientError):
    """No result record can be written for this job (its output lies outside
    IMG2IMG_ALLOWED_OUTPUTS): released at once, so SQS redrive moves it to the DLQ."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message, retry_after=0)


class InvalidJob(PermanentError):
    """The message is not a valid job (bad JSON, missing field, value out of range)."""


class UnsupportedSchemaVersion(InvalidJob):
    """The message has a newer major schema_version than this worker understands.

    Not recorded as a failure: the message waits in the dead-letter queue until workers
    that understand it are deployed, then ``img2img-producer redrive`` brings it back.
    """


class OutputConflict(PermanentError):
    """The output key already holds an object that this job did not write."""


class InvalidImage(PermanentError):
    """The input is not a readable image (empty, truncated, corrupt, unknown format)."""


class ImageTooLarge(PermanentError):
    """The input exceeds the decompression-bomb pixel limit."""


class InputNotFound(PermanentError):
    """The input object or file does not exist."""


class LocationNotAllowed(PermanentError):
    """An input or output location lies outside the allowed buckets/prefixes."""


class ModelNotAllowed(PermanentError):
    """The model is not on the allow-list."""


class ModelNotFound(PermanentError):
    """The model reference cannot be resolved or loaded."""


class LoraNotAllowed(PermanentError):
    """A LoRA adapter is not on the allow-list (IMG2IMG_ALLOWED_LORAS)."""


class LoraNotFound(PermanentError):
    """A LoRA reference cannot be resolved or read."""


class LoraMismatch(PermanentError):
    """A LoRA adapter does not fit the base model (another family, missing layers)."""


class ModelNotSupported(ModelNotFound):
    """The model is of a family (pipeline class) the worker cannot run."""


class GenerationFailed(PermanentError):
    """The pipeline failed for this job even after the out-of-memory fallbacks."""


class Timeout(PermanentError):
    """The generation ran longer than the job's timeout_seconds and was stopped."""


class Cancelled(PermanentError):
    """The job's batch (or the job) was cancelled before it started."""


class Expired(PermanentError):
    """The job was received after its expires_at."""


class CallbackNotAllowed(PermanentError):
    """The job's callback_url is not admitted by IMG2IMG_ALLOWED_CALLBACKS (or points at a
    link-local or metadata address, which is never allowed)."""


class StorageUnavailable(TransientError):
    """S3 or SQS throttled, timed out, or answered with a server error."""


def error_type(exc: BaseException) -> str:
    """The name a result record uses for ``exc``."""
    return type(exc).__name__


def is_permanent(exc: BaseException) -> bool:
    """True for errors that must not be retried; unknown exceptions count as permanent.

    An unexpected exception is a bug or bad input for this job; retrying it on every
    worker would only burn GPU time before it lands in the DLQ anyway.
    """
    if isinstance(exc, Img2ImgError):
        return exc.permanent
    return True
