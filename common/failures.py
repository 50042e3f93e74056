"""The failed jobs of a run, as lines for the console: the file and the reason."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

FAILURES_SHOWN = 20


def failure_lines(records: Iterable[Mapping[str, Any]], *, limit: int = FAILURES_SHOWN,
                  more: str = "") -> list[str]:
    """``  failed <input>: <error type>: <message>`` for the first ``limit`` failures,
    then one line counting the rest (``more`` says where to read them)."""
    failed = [r for r in records if r.get("status") == "failed"]
    lines = []
    for record in failed[:limit]:
        error = record.get("error") or {}
        lines.append(f"  failed {record.get('input', '?')}: {error.get('type', '?')}: "
                     f"{error.get('message', '')}")
    if len(failed) > limit:
        lines.append(f"  ... and {len(failed) - limit} more failed" + (f" ({more})" if more
                                                                         else ""))
    return lines
