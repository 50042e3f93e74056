"""Benchmarks: the engine on one GPU (``engine_bench``) and the fleet plumbing around a
fixed-latency engine (``overlap_bench``). See docs/benchmarks.md."""
