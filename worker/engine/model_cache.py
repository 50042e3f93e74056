"""A warm LRU cache of loaded pipelines, bounded by count and by GPU memory."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ModelCache(Generic[K, V]):
    """Least-recently-used cache; ``loader`` runs only on a miss.

    ``memory_in_use`` (bytes allocated on the device, or None off-GPU) and
    ``memory_budget`` bound the cache by memory as well: after each load, the least
    recently used other entries are evicted until usage fits the budget.
    """

    def __init__(
        self,
        loader: Callable[[K], V],
        *,
        max_entries: int,
        on_evict: Callable[[K, V], None] | None = None,
        memory_in_use: Callable[[], int | None] = lambda: None,
        memory_budget: int | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._loader = loader
        self._max_entries = max_entries
        self._on_evict = on_evict
        self._memory_in_use = memory_in_use
        self._memory_budget = memory_budget
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0
        self.evictions = 0

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[K]:
        return list(self._entries)

    def get(self, key: K) -> V:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
            while len(self._entries) >= self._max_entries:
                self._evict_oldest()
            value = self._loader(key)
            self.loads += 1
            self._entries[key] = value
            self._fit_memory(keep=key)
            return value

    def evict(self, key: K) -> None:
        with self._lock:
            if key in self._entries:
                self._drop(key, self._entries.pop(key))

    def clear(self) -> None:
        with self._lock:
            while self._entries:
                self._evict_oldest()

    def _fit_memory(self, keep: K) -> None:
        if self._memory_budget is None:
            return
        while len(self._entries) > 1:
            used = self._memory_in_use()
            if used is None or used <= self._memory_budget:
                return
            oldest = next(iter(self._entries))
            if oldest == keep:
                return
            log.info("evicting %s: device memory %d > budget %d", oldest, used,
                     self._memory_budget)
            self._drop(oldest, self._entries.pop(oldest))

    def _evict_oldest(self) -> None:
        key, value = self._entries.popitem(last=False)
        self._drop(key, value)

    def _drop(self, key: K, value: V) -> None:
        self.evictions += 1
        if self._on_evict is not None:
            self._on_evict(key, value)
