"""ModelCache with a plain loader: counts, LRU order, eviction, memory budget."""

from __future__ import annotations

import threading
import time

import pytest

from worker.engine.model_cache import ModelCache


class Recorder:
    """A loader that makes one object per key and tracks the 'device memory' it holds."""

    def __init__(self, sizes: dict[str, int] | None = None) -> None:
        self.loaded: list[str] = []
        self.evicted: list[tuple[str, object]] = []
        self.sizes = sizes or {}
        self.live: dict[str, int] = {}

    def load(self, key: str) -> dict:
        self.loaded.append(key)
        self.live[key] = self.sizes.get(key, 0)
        return {"model": key}

    def evict(self, key: str, value: object) -> None:
        self.evicted.append((key, value))
        self.live.pop(key)

    def memory(self) -> int:
        return sum(self.live.values())


def test_loader_runs_only_on_a_miss() -> None:
    rec = Recorder()
    cache = ModelCache(rec.load, max_entries=2, on_evict=rec.evict)
    first = cache.get("a")
    assert cache.get("a") is first
    assert cache.get("a") is first
    assert cache.loads == 1 and rec.loaded == ["a"]
    assert "a" in cache and len(cache) == 1 and cache.evictions == 0


def test_least_recently_used_is_evicted() -> None:
    rec = Recorder()
    cache = ModelCache(rec.load, max_entries=2, on_evict=rec.evict)
    a = cache.get("a")
    cache.get("b")
    cache.get("a")  # a is now the most recent
    cache.get("c")  # evicts b, not a
    assert cache.keys() == ["a", "c"]
    assert [k for k, _ in rec.evicted] == ["b"]
    assert cache.get("a") is a and cache.loads == 3
    cache.get("b")  # reloads b, evicts c (a was used last)
    assert cache.keys() == ["a", "b"]
    assert [k for k, _ in rec.evicted] == ["b", "c"]
    assert cache.loads == 4 and cache.evictions == 2


def test_eviction_callback_gets_key_and_value() -> None:
    rec = Recorder()
    cache = ModelCache(rec.load, max_entries=1, on_evict=rec.evict)
    a = cache.get("a")
    cache.get("b")
    assert rec.evicted == [("a", a)]
    assert rec.evicted[0][1] is a


def test_max_entries_one_swaps_models() -> None:
    rec = Recorder()
    cache = ModelCache(rec.load, max_entries=1, on_evict=rec.evict)
    for key in ["a", "b", "a", "b"]:
        cache.get(key)
        assert cache.keys() == [key]
    assert cache.loads == 4 and cache.evictions == 3


def test_explicit_evict_and_clear() -> None:
    rec = Recorder()
    cache = ModelCache(rec.load, max_entries=3, on_evict=rec.evict)
    for key in "abc":
        cache.get(key)
    cache.evict("b")
    cache.evict("not-there")  # no-op
    assert cache.keys() == ["a", "c"] and [k for k, _ in rec.evicted] == ["b"]
    cache.clear()
    assert len(cache) == 0
    assert [k for k, _ in rec.evicted] == ["b", "a", "c"]  # oldest first
    assert cache.evictions == 3


def test_works_without_an_eviction_callback() -> None:
    cache = ModelCache(lambda k: k * 2, max_entries=1)
    assert cache.get("x") == "xx"
    assert cache.get("y") == "yy"
    assert cache.keys() == ["y"] and cache.evictions == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_max_entries_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ModelCache(lambda k: k, max_entries=bad)


def test_memory_budget_evicts_oldest_until_it_fits() -> None:
    rec = Recorder(sizes={"a": 100, "b": 100, "c": 100, "d": 100})
    cache = ModelCache(rec.load, max_entries=10, on_evict=rec.evict,
                          memory_in_use=rec.memory, memory_budget=250)
    cache.get("a")
    cache.get("b")
    assert cache.keys() == ["a", "b"] and rec.evicted == []
    cache.get("c")  # 300 > 250: a goes
    assert cache.keys() == ["b", "c"] and rec.memory() == 200
    cache.get("b")  # touch b, so c is the oldest now
    cache.get("d")
    assert cache.keys() == ["b", "d"] and [k for k, _ in rec.evicted] == ["a", "c"]


def test_memory_budget_evicts_several_for_a_big_model() -> None:
    rec = Recorder(sizes={"a": 100, "b": 100, "c": 100, "big": 250})
    cache = ModelCache(rec.load, max_entries=10, on_evict=rec.evict,
                          memory_in_use=rec.memory, memory_budget=300)
    for key in "abc":
        cache.get(key)
    cache.get("big")  # 550 -> evict a (450), b (350), c (250)
    assert cache.keys() == ["big"]
    assert [k for k, _ in rec.evicted] == ["a", "b", "c"]


def test_memory_budget_never_evicts_the_model_just_loaded() -> None:
    rec = Recorder(sizes={"a": 100, "huge": 1000})
    cache = ModelCache(rec.load, max_entries=10, on_evict=rec.evict,
                          memory_in_use=rec.memory, memory_budget=500)
    cache.get("a")
    value = cache.get("huge")
    assert cache.keys() == ["huge"] and value == {"model": "huge"}
    assert [k for k, _ in rec.evicted] == ["a"]


def test_no_memory_eviction_off_gpu() -> None:
    rec = Recorder(sizes={"a": 1000, "b": 1000})
    cache = ModelCache(rec.load, max_entries=10, on_evict=rec.evict,
                          memory_in_use=lambda: None, memory_budget=10)
    cache.get("a")
    cache.get("b")
    assert cache.keys() == ["a", "b"] and rec.evicted == []


def test_loader_error_caches_nothing_and_retries() -> None:
    calls = []

    def flaky(key: str) -> str:
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("disk full")
        return key.upper()

    cache = ModelCache(flaky, max_entries=2)
    with pytest.raises(RuntimeError, match="disk full"):
        cache.get("a")
    assert "a" not in cache and cache.loads == 0
    assert cache.get("a") == "A" and cache.loads == 1 and calls == ["a", "a"]


def test_concurrent_gets_load_once() -> None:
    loads = []

    def slow(key: str) -> object:
        loads.append(key)
        time.sleep(0.05)
        return object()

    cache = ModelCache(slow, max_entries=2)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("m")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["m"] and cache.loads == 1
    assert len(results) == 8 and all(r is results[0] for r in results)
