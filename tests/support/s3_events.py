"""S3 ObjectCreated notifications as SQS message bodies, as S3 sends them."""

from __future__ import annotations

import json
from typing import Any


def event(bucket: Any, key: Any, name: str = "ObjectCreated:Put") -> dict:
    return {"eventSource": "aws:s3", "eventName": name,
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": "x"}}}


def events(*records: Any) -> str:
    return json.dumps({"Records": list(records)})
