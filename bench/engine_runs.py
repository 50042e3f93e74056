"""The engine benchmark's runs: the original script's loop (cases 1 and 2) and the
worker's Engine (the other cases)."""

from __future__ import annotations

import gc
import time
from pathlib import Path

from bench import engine_workload
from bench.engine_workload import CaseResult, Workload, sync


def run_original(work: Workload, items: list, *, memory_efficient: bool,
                 result: CaseResult) -> list:
    """The original script's loop: load, (switch), generate one image, free, repeat."""
    import torch
    from diffusers import AutoPipelineForImage2Image, DPMSolverMultistepScheduler

    device = "cuda" if engine_workload.cuda() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    outputs, load_s = [], 0.0
    if device == "cpu":
        result.notes.append("fp32 on CPU (fp16 is the GPU setting)")
        if memory_efficient:
            result.notes.append("sequential CPU offload needs a GPU: slicing only")
    started = time.perf_counter()
    for item in items:
        t0 = time.perf_counter()
        pipe = AutoPipelineForImage2Image.from_pretrained(
            work.folder, torch_dtype=dtype, use_safetensors=True, local_files_only=True)
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        if memory_efficient:
            pipe.enable_attention_slicing()
            if device == "cuda":
                pipe.enable_sequential_cpu_offload()
                try:
                    pipe.enable_xformers_memory_efficient_attention()
                except Exception as exc:  # noqa: BLE001 - as the original, best effort
                    if not any("xformers" in n for n in result.notes):
                        result.notes.append(f"xformers unavailable: {str(exc)[:80]}")
        else:
            pipe.to(device)
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        sync()
        load_s += time.perf_counter() - t0
        image = pipe(prompt=item.prompt, image=item.image, strength=work.strength,
                     num_inference_steps=work.steps, guidance_scale=work.guidance,
                     generator=torch.Generator("cpu").manual_seed(item.seed)).images[0]
        outputs.append(image)
        del pipe
        if device == "cuda":
            torch.cuda.empty_cache()
        gc.collect()
    sync()
    result.seconds = time.perf_counter() - started
    result.images = len(items)
    result.load_s = load_s
    return outputs


# -- cases 3 to 6: the worker's Engine ---------------------------------------------------

def make_engine(work: Workload, model_dir: Path, mode: str, *, compile: bool = False,
                max_batch: int = 64, lean_offload: str = "sequential"):
    from worker.engine.engine import Engine
    from worker.settings import WorkerSettings

    settings = WorkerSettings(
        allowed_models=[work.folder], memory_mode=mode, model_cache=model_dir,
        max_batch_size=min(64, max_batch), compile=compile, device="auto", dtype="auto",
        max_cached_models=1, lean_offload=lean_offload)
    return Engine(settings)


def batch_key(work: Workload):
    from worker.batching import BatchKey

    return BatchKey(model=work.folder, width=work.size, height=work.size, steps=work.steps,
                    strength=work.strength, guidance_scale=work.guidance,
                    scheduler="dpmsolver++")


def run_engine(engine, work: Workload, items: list, batch: int, result: CaseResult, *,
               warmup_batches: int = 1) -> list:
    """Warm-up batches (timed apart), then ``len(items) // batch`` timed batches."""
    key = batch_key(work)
    t0 = time.perf_counter()
    engine.model(work.folder)  # load (no-op when warm)
    result.load_s = (result.load_s or 0.0) + time.perf_counter() - t0
    warm = []
    for _ in range(warmup_batches):
        t0 = time.perf_counter()
        engine.generate(key, items[:batch])
        sync()
        warm.append(time.perf_counter() - t0)
    result.warmup_s = round(sum(warm), 4)
    if warmup_batches > 1:
        result.notes.append("warm-up batches s: " + ", ".join(f"{w:.2f}" for w in warm))
    batches = max(1, len(items) // batch)
    outputs = []
    started = time.perf_counter()
    for index in range(batches):
        chunk = items[index * batch:(index + 1) * batch]
        if len(chunk) < batch:  # fewer images than one batch: repeat to fill it
            chunk = (chunk * batch)[:batch]
        outputs += engine.generate(key, chunk).images
    sync()
    result.seconds = time.perf_counter() - started
    result.images = batches * batch
    return outputs
