"""What an SQS message body is, decided without trusting it.

Both the worker (before decoding jobs) and ``redrive`` (to leave non-job bodies in the
dead-letter queue) ask the same question, so it is answered once, here. Reading a body
never raises: deeply nested JSON, odd types and invalid text all become NOT_A_JOB with
a reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

# SQS caps a message at 256 KiB; a job is a few hundred bytes. Anything far larger is
# not ours, and parsing it costs memory for nothing.
MAX_BODY_CHARS = 256 * 1024


class BodyKind(str, Enum):
    JOB = "job"  # a job message (possibly with invalid fields)
    S3_EVENT = "s3-event"  # an S3 event notification ("Records")
    S3_TEST_EVENT = "s3-test-event"  # sent once when a notification is configured
    NOT_A_JOB = "not-a-job"


@dataclass(frozen=True)
class Body:
    kind: BodyKind
    data: dict[str, Any] | None = None
    reason: str | None = None  # why it is NOT_A_JOB


def read_body(body: str) -> Body:
    """Classify a body; never raises."""
    if len(body) > MAX_BODY_CHARS:
        return Body(BodyKind.NOT_A_JOB, reason=f"body is {len(body)} characters, over "
                    f"{MAX_BODY_CHARS}")
    try:
        data = json.loads(body)
    except RecursionError:
        return Body(BodyKind.NOT_A_JOB, reason="body is JSON nested too deeply")
    except (ValueError, TypeError) as exc:
        return Body(BodyKind.NOT_A_JOB, reason=f"body is not JSON: {exc}")
    if not isinstance(data, dict):
        return Body(BodyKind.NOT_A_JOB,
                    reason=f"body is JSON {type(data).__name__}, not an object")
    if data.get("Event") == "s3:TestEvent":
        return Body(BodyKind.S3_TEST_EVENT, data)
    if "Records" in data:
        if not isinstance(data["Records"], list):
            return Body(BodyKind.NOT_A_JOB, reason="S3 event 'Records' is not a list")
        return Body(BodyKind.S3_EVENT, data)
    if "job_id" not in data and "output" not in data and "input" not in data:
        return Body(BodyKind.NOT_A_JOB,
                    reason="not a job: a JSON object with none of job_id, input, output")
    return Body(BodyKind.JOB, data)
