"""Grouping ready jobs into batches that one pipeline call can run."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TypeVar

from worker.engine import BatchKey

T = TypeVar("T")


def group_batches(items: Iterable[T], key_of: Callable[[T], BatchKey],
                  max_batch_size: int) -> list[tuple[BatchKey, list[T]]]:
    """Group by key in first-seen order, each group cut into slices of max_batch_size.

    First-seen order keeps the oldest job's batch first, so no job starves behind a
    stream of jobs with a more common key.
    """
    groups: OrderedDict[BatchKey, list[T]] = OrderedDict()
    for item in items:
        groups.setdefault(key_of(item), []).append(item)
    batches = []
    for key, members in groups.items():
        for start in range(0, len(members), max_batch_size):
            batches.append((key, members[start:start + max_batch_size]))
    return batches
