"""Reading a ``results.jsonl`` back: one result record (a JSON object) per line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_results(path: Path) -> list[dict[str, Any]]:
    """The records in ``path``, in file order; lines that are not JSON objects are
    skipped (a run cut off mid-write leaves a partial last line)."""
    records: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
