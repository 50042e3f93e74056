"""The LoRA cases of the engine benchmark: what switching adapters costs.

- ``lora-swap``: one adapter swap on a warm model, both adapters already loaded (the
  cost every batch with another adapter set pays), and one cold load (file to LRU).
- ``lora-mixN-bB``: a stream of jobs, each with one adapter drawn round-robin from a
  pool of N (1, 4, 16), grouped into batches the way the worker groups ready jobs
  (windows of B jobs, grouped by batch key). With N=1 it is a static LoRA; the gap
  between N=1 and N=16 is the price of per-job adapters, in swaps and smaller batches.
- ``lora-none-bB``: the same stream without adapters, on a base that admits them (QKV
  projections unfused), as the floor.

Adapters are made here with peft on the model's UNet attention (rank 16 by default,
random non-zero weights) and saved in diffusers' LoRA format.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.engine_runs import batch_key
from bench.engine_workload import CaseResult, Workload, make_items, sync

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
POOLS = (1, 4, 16)


def make_adapters(work: Workload, folder: Path, count: int, rank: int) -> list[Path]:
    """``count`` LoRAs for the model in ``work.folder``, made once into ``folder``."""
    import torch
    from diffusers import AutoPipelineForImage2Image
    from peft import LoraConfig, get_peft_model_state_dict

    wanted = [folder / f"lora-r{rank}-{i:02d}" for i in range(count)]
    if all((p / "pytorch_lora_weights.safetensors").is_file() for p in wanted):
        return wanted
    pipe = AutoPipelineForImage2Image.from_pretrained(work.folder, use_safetensors=True)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS,
                                     init_lora_weights=False))
    state = get_peft_model_state_dict(pipe.unet)
    for i, path in enumerate(wanted):
        generator = torch.Generator().manual_seed(i)
        layers = {k: (torch.randn(v.shape, generator=generator) * 0.02 if "lora_B" in k
                      else torch.randn(v.shape, generator=generator) / rank ** 0.5)
                  for k, v in state.items()}
        type(pipe).save_lora_weights(path, unet_lora_layers=layers, safe_serialization=True)
    return wanted


def lora_engine(work: Workload, model_dir: Path, adapters_dir: Path, max_batch: int,
                compile: bool = False):
    from worker.engine.engine import Engine
    from worker.settings import WorkerSettings

    return Engine(WorkerSettings(
        allowed_models=[work.folder], memory_mode="fast", model_cache=model_dir,
        max_batch_size=max_batch, device="auto", dtype="auto", max_cached_models=1,
        compile=compile, allowed_loras=[f"{adapters_dir}/*"], max_cached_loras=16))


def _key(work: Workload, adapter: Path | None):
    from dataclasses import replace

    return replace(batch_key(work), loras=((str(adapter), 1.0),) if adapter else ())


def measure_swap(engine, work: Workload, adapters: list[Path], swaps: int,
                 result: CaseResult) -> dict[str, Any]:
    """Seconds of one cold load and of one warm swap (mean of ``swaps``)."""
    loaded = engine.model(work.folder).adapters
    first, second = ((str(adapters[0]), 1.0),), ((str(adapters[1]), 1.0),)
    t0 = time.perf_counter()
    loaded.activate(first)
    sync()
    cold = time.perf_counter() - t0
    loaded.activate(second)
    t0 = time.perf_counter()
    for i in range(swaps):
        loaded.activate(first if i % 2 == 0 else second)
    sync()
    warm = (time.perf_counter() - t0) / swaps
    t0 = time.perf_counter()
    loaded.activate(())
    sync()
    off = time.perf_counter() - t0
    result.notes.append(f"cold load {cold * 1e3:.1f} ms, warm swap {warm * 1e3:.2f} ms, "
                        f"all off {off * 1e3:.2f} ms (mean of {swaps} swaps)")
    return {"cold_load_ms": round(cold * 1e3, 2), "warm_swap_ms": round(warm * 1e3, 3),
            "all_off_ms": round(off * 1e3, 3), "swaps": swaps,
            "hotswap": loaded.hotswap}


def run_stream(engine, work: Workload, items: list, pool: list[Path] | None, batch: int,
               result: CaseResult) -> list:
    """The stream, windows of ``batch`` ready jobs grouped by key as the worker does."""
    from worker.batching import group_batches

    jobs = [(item, pool[i % len(pool)] if pool else None) for i, item in enumerate(items)]
    loaded = engine.model(work.folder).adapters
    for adapter in pool or []:  # adapters warm in the LRU: the stream measures swaps
        loaded.activate(((str(adapter), 1.0),))
    planned = [group for start in range(0, len(jobs), batch)
               for group in group_batches(jobs[start:start + batch],
                                          lambda job: _key(work, job[1]), batch)]
    first_key = planned[0][0]
    for size in sorted({len(members) for _, members in planned}):
        # One untimed call per batch size: a compiled UNet compiles each shape once.
        engine.generate(first_key, items[:size])
    swaps, calls = loaded.stats.swaps, 0
    outputs: list = []
    started = time.perf_counter()
    for key, members in planned:
        outputs += engine.generate(key, [item for item, _ in members]).images
        calls += 1
    sync()
    result.seconds = time.perf_counter() - started
    result.images = len(jobs)
    result.notes.append(f"{calls} pipeline calls, {loaded.stats.swaps - swaps} adapter "
                        "swaps")
    return outputs


def run_lora_cases(bench, work: Workload, images: int, batch: int, rank: int,
                   swaps: int, pools: tuple[int, ...] = POOLS) -> None:
    """Every LoRA case on one engine (the model and its adapters stay warm)."""
    args = bench.args
    adapters = make_adapters(work, Path(args.model_dir) / "bench-loras", max(2, *pools),
                             rank)
    engine = lora_engine(work, Path(args.model_dir), Path(args.model_dir) / "bench-loras",
                         max_batch=batch, compile=args.lora_compile)
    items = make_items(max(images, batch), work.size)
    bench.info.setdefault("lora", {})["rank"] = rank
    try:
        engine.model(work.folder)

        def swap(r: CaseResult) -> list:
            bench.info["lora"]["swap"] = measure_swap(engine, work, adapters, swaps, r)
            return []
        bench.case(CaseResult("lora-swap", work.model, f"one adapter swap, rank {rank}",
                              1), work, swap)
        bench.case(CaseResult(f"lora-none-b{batch}", work.model,
                              f"stream without adapters (QKV unfused), batch {batch}",
                              batch), work,
                   lambda r: run_stream(engine, work, items, None, batch, r))
        for size in pools:
            bench.case(CaseResult(f"lora-mix{size}-b{batch}", work.model,
                                  f"stream mixing {size} adapter(s) round-robin, windows "
                                  f"of {batch}", batch), work,
                       lambda r, n=size: run_stream(engine, work, items, adapters[:n],
                                                    batch, r))
    finally:
        engine.close()
