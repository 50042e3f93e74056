"""Engine benchmark: the original script's approach against ours, in one run.

Cases (each on the same model folder, loaded from safetensors on disk):

1. ``original``: the original script, exactly: a new pipeline from disk for every
   image (``AutoPipelineForImage2Image.from_pretrained``, fp16, DPM-Solver++), batch 1,
   ``torch.cuda.empty_cache()`` and ``gc.collect()`` after each image. diffusers direct.
2. ``original-lean``: the same with the original "memory efficient" switch on
   (attention slicing, sequential CPU offload, xformers when installed). diffusers
   direct, so it is the original script, not our ``lean`` mode.
3. ``fast-bN``: ours, the worker's Engine in ``fast`` mode, model warm, batch N.
4. ``compile-<mode>``: ours with ``torch.compile``; warm-up (compilation, CUDA graph
   capture) is timed separately and excluded from throughput.
5. ``balanced-bN``: ours in ``balanced`` mode (model CPU offload).
6. ``lean-bN``: ours in ``lean`` mode (the original switch, but the model stays warm and
   images are batched), the case the lean target compares with case 2; and
   ``lean-group-bN``: ``lean`` with ``IMG2IMG_LEAN_OFFLOAD=group`` (leaf-level group
   offloading on a CUDA stream, SDPA instead of slicing).

On a GPU the model is full-size SD 1.5 at 512 px (and SDXL at 1024 px with --sdxl)
with random weights. Without CUDA every case runs on the tiny model at a small size:
a CPU smoke run that checks the benchmark works, not a performance result.

    PYTHONPATH=. python -m bench.engine_bench --out bench-results/engine.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.devstats import DeviceMemorySampler, machine_info
from bench.flops import count_call_flops, count_pipeline_flops, dense_peak_tflops
from bench.models import default_model_dir, ensure_model

REPO = Path(__file__).resolve().parent.parent
SAMPLE_IMAGES = REPO / "data" / "input_images"
PRODUCTION_COMPILE_MODE = "max-autotune-no-cudagraphs"
CPU_SMOKE_LABEL = "CPU smoke run, not a performance result"


@dataclass
class Workload:
    model: str  # 'sd15', 'sdxl' or 'tiny'
    folder: str
    size: int
    steps: int
    strength: float
    guidance: float

    @property
    def denoising_steps(self) -> int:
        return min(int(self.steps * self.strength), self.steps)


@dataclass
class CaseResult:
    name: str
    model: str
    description: str
    batch_size: int
    images: int = 0
    seconds: float = 0.0
    images_per_s: float | None = None
    s_per_image: float | None = None
    warmup_s: float | None = None
    load_s: float | None = None
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    device_used_peak_bytes: int | None = None
    device_used_before_bytes: int | None = None
    flops_per_image: float | None = None
    achieved_tflops: float | None = None
    fraction_of_peak: float | None = None
    vs_original: float | None = None
    vs_original_lean: float | None = None
    max_abs_diff_vs_original: float | None = None
    mean_abs_diff_vs_original: float | None = None
    status: str = "ok"
    notes: list[str] = field(default_factory=list)


# -- inputs -----------------------------------------------------------------------------

def make_items(count: int, size: int) -> list:
    """``count`` jobs: the sample images resized to size x size, varied prompts and seeds."""
    from PIL import Image

    from contract.settings import DEFAULT_PROMPTS
    from worker.batching import GenerationItem
    from worker.images import to_rgb

    sources = sorted(p for p in SAMPLE_IMAGES.iterdir() if p.suffix in (".png", ".jpg"))
    images = [to_rgb(Image.open(p)).resize((size, size), Image.Resampling.LANCZOS)
              for p in sources] or [Image.new("RGB", (size, size), (120, 90, 60))]
    return [GenerationItem(image=images[i % len(images)],
                           prompt=DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)],
                           negative_prompt="", seed=1000 + i)
            for i in range(count)]


# -- GPU helpers ------------------------------------------------------------------------

def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def release() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Measure:
    """Allocator and device-level peaks over a block."""

    def __enter__(self) -> Measure:
        import torch

        release()
        if cuda():
            torch.cuda.reset_peak_memory_stats()
        self.sampler = DeviceMemorySampler().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        sync()
        self.sampler.__exit__(*exc)
        self.allocated = torch.cuda.max_memory_allocated() if cuda() else None
        self.reserved = torch.cuda.max_memory_reserved() if cuda() else None

    def fill(self, result: CaseResult) -> None:
        result.peak_allocated_bytes = self.allocated
        result.peak_reserved_bytes = self.reserved
        result.device_used_peak_bytes = self.sampler.peak_used
        result.device_used_before_bytes = self.sampler.baseline_used


def to_array(image):
    import numpy as np

    return np.asarray(image, dtype=np.float32)


# -- case 1 and 2: the original script ---------------------------------------------------

def run_original(work: Workload, items: list, *, memory_efficient: bool,
                 result: CaseResult) -> list:
    """The original script's loop: load, (switch), generate one image, free, repeat."""
    import torch
    from diffusers import AutoPipelineForImage2Image, DPMSolverMultistepScheduler

    device = "cuda" if cuda() else "cpu"
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


# -- the run ------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.gpu = cuda()
        self.results: list[CaseResult] = []
        self.info: dict[str, Any] = {"machine": machine_info(), "started": time.time(),
                                     "argv": sys.argv[1:], "workloads": {}, "flops": {},
                                     "model_builds": {}}
        if not self.gpu:
            self.info["label"] = CPU_SMOKE_LABEL
        import torch

        name = torch.cuda.get_device_name(0) if self.gpu else "cpu"
        self.peak_tflops = dense_peak_tflops(name) if self.gpu else None
        self.info["device"] = name
        self.info["dense_fp16_peak_tflops"] = self.peak_tflops
        self.reference: dict[str, Any] = {}  # model -> first output of case 1
        self.flops: dict[tuple[str, int], float] = {}

    # bookkeeping ------------------------------------------------------------------

    def save(self) -> None:
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        self._ratios()
        doc = {**self.info, "cases": [vars(r) for r in self.results]}
        out.write_text(json.dumps(doc, indent=2, default=str))
        if self.args.markdown:
            Path(self.args.markdown).write_text(markdown(doc))

    def _ratios(self) -> None:
        """Derived columns, recomputed on every save: cases 1 and 2 run before the FLOPs
        are counted (that needs the warm fast pipeline)."""
        for result in self.results:
            flops = self.flops.get((result.model, result.batch_size))
            if flops and result.images_per_s:
                result.flops_per_image = flops
                result.achieved_tflops = round(flops * result.images_per_s / 1e12, 6)
                if self.peak_tflops:
                    result.fraction_of_peak = round(result.achieved_tflops / self.peak_tflops,
                                                    5)
            base = {r.name: r for r in self.results if r.model == result.model}
            one, two = base.get("original"), base.get("original-lean")
            if result.images_per_s:
                if one and one.images_per_s:
                    result.vs_original = round(result.images_per_s / one.images_per_s, 3)
                if two and two.images_per_s:
                    result.vs_original_lean = round(result.images_per_s / two.images_per_s, 3)

    def case(self, result: CaseResult, work: Workload, body) -> None:
        """Run one case; a failure is recorded as data, never stops the run."""
        print(f"[bench] {work.model} {result.name} ...", file=sys.stderr, flush=True)
        try:
            with Measure() as measure:
                outputs = body(result)
            measure.fill(result)
            self._finish(result, work, outputs)
        except Exception as exc:  # noqa: BLE001
            result.status = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            traceback.print_exc()
        finally:
            release()
        self.results.append(result)
        self.save()
        print(f"[bench]   {result.status} {result.images_per_s or 0:.3f} img/s",
              file=sys.stderr, flush=True)

    def _finish(self, result: CaseResult, work: Workload, outputs: list) -> None:
        if result.images and result.seconds > 0:
            result.images_per_s = round(result.images / result.seconds, 4)
            result.s_per_image = round(result.seconds / result.images, 4)
        reference = self.reference.get(work.model)
        if outputs:
            if reference is None and result.name == "original":
                self.reference[work.model] = to_array(outputs[0])
            elif reference is not None:
                diff = abs(to_array(outputs[0]) - reference)
                result.max_abs_diff_vs_original = float(diff.max())
                result.mean_abs_diff_vs_original = round(float(diff.mean()), 4)

    # FLOPs --------------------------------------------------------------------------

    def count_flops(self, work: Workload, engine, batches: list[int]) -> None:
        pipe = engine.model(work.folder).pipeline
        table = self.info["flops"].setdefault(work.model, {})
        for batch in sorted(set(batches)):
            try:
                count = count_pipeline_flops(pipe, batch=batch, height=work.size,
                                             width=work.size, steps=work.steps,
                                             strength=work.strength,
                                             guidance_scale=work.guidance)
            except Exception as exc:  # noqa: BLE001
                table[str(batch)] = f"failed: {exc!r}"[:300]
                continue
            self.flops[(work.model, batch)] = count.per_image
            table[str(batch)] = count.as_dict()
        if self.args.flops_crosscheck and 1 in batches:
            # The whole pipeline call under the counter: must agree with the parts.
            items = make_items(1, work.size)
            try:
                total = count_call_flops(lambda: engine.generate(batch_key(work), items))
                table["crosscheck_whole_call_batch1"] = total
                parts = self.flops.get((work.model, 1))
                if parts:
                    table["crosscheck_ratio"] = round(total / parts, 4)
            except Exception as exc:  # noqa: BLE001
                table["crosscheck_whole_call_batch1"] = f"failed: {exc!r}"[:300]
        self.save()

    # cases ------------------------------------------------------------------------

    def run_model(self, work: Workload, cases: list[str], batch_sizes: list[int],
                  images: int, baseline_images: int) -> None:
        args = self.args
        self.info["workloads"][work.model] = vars(work) | {
            "denoising_steps": work.denoising_steps}
        items = make_items(max(images, max(batch_sizes), args.balanced_batch,
                               *args.lean_batch_sizes), work.size)
        base_items = items[:baseline_images]

        if "original" in cases or "original-lean" in cases:
            # One untimed image first: CUDA context, cuBLAS/cuDNN handles and lazy
            # imports are paid once per process by the original script too, not per image.
            t0 = time.perf_counter()
            run_original(work, items[:1], memory_efficient=False,
                         result=CaseResult("process-warm-up", work.model, "", 1))
            release()
            self.info.setdefault("process_warmup_s", {})[work.model] = round(
                time.perf_counter() - t0, 3)
        if "original" in cases:
            self.case(CaseResult("original", work.model,
                                 "original script: reload per image, batch 1, fp16, "
                                 "empty_cache+gc per image", 1), work,
                      lambda r: run_original(work, base_items, memory_efficient=False,
                                             result=r))
        if "original-lean" in cases:
            self.case(CaseResult("original-lean", work.model,
                                 "original script with its memory-efficient switch "
                                 "(slicing, sequential offload, xformers)", 1), work,
                      lambda r: run_original(work, base_items, memory_efficient=True,
                                             result=r))
        engine = None
        needs_fast = any(c in cases for c in ("fast", "balanced", "compile", "lean",
                                              "lean-group"))
        if needs_fast:
            engine = make_engine(work, Path(args.model_dir), "fast", max_batch=max(batch_sizes))
            t0 = time.perf_counter()
            engine.model(work.folder)
            self.info.setdefault("fast_load_s", {})[work.model] = round(
                time.perf_counter() - t0, 3)
            self.count_flops(work, engine, [1, *batch_sizes, args.balanced_batch,
                                            args.compile_batch, *args.lean_batch_sizes])
        if "fast" in cases:
            for batch in batch_sizes:
                self.case(CaseResult(f"fast-b{batch}", work.model,
                                     f"ours: Engine fast, warm model, batch {batch}", batch),
                          work, lambda r, b=batch: run_engine(engine, work, items[:images],
                                                              b, r))
        if engine is not None:
            engine.close()
            del engine
            release()
        if "balanced" in cases:
            batch = args.balanced_batch

            def balanced(r: CaseResult) -> list:
                eng = make_engine(work, Path(args.model_dir), "balanced", max_batch=batch)
                try:
                    return run_engine(eng, work, items[:max(images, batch)], batch, r)
                finally:
                    eng.close()
            self.case(CaseResult(f"balanced-b{batch}", work.model,
                                 f"ours: Engine balanced (model CPU offload), batch {batch}",
                                 batch), work, balanced)
        for case, offload, how in (
                ("lean", "sequential", "the original switch, model warm"),
                ("lean-group", "group", "leaf-level group offload on a CUDA stream, SDPA")):
            if case not in cases:
                continue
            for batch in args.lean_batch_sizes:
                def lean(r: CaseResult, batch: int = batch, offload: str = offload) -> list:
                    eng = make_engine(work, Path(args.model_dir), "lean", max_batch=batch,
                                      lean_offload=offload)
                    try:
                        return run_engine(eng, work, items[:max(batch, min(images, 2 * batch))],
                                          batch, r)
                    finally:
                        eng.close()
                self.case(CaseResult(f"{case}-b{batch}", work.model,
                                     f"ours: Engine lean ({how}), batch {batch}", batch),
                          work, lean)

    def run_compile(self, work: Workload, images: int) -> None:
        import torch

        args = self.args
        batch = args.compile_batch
        items = make_items(max(images, batch), work.size)
        for mode in args.compile_modes:
            def body(r: CaseResult, mode: str = mode) -> list:
                production = mode == PRODUCTION_COMPILE_MODE
                eng = make_engine(work, Path(args.model_dir), "fast", compile=production,
                                  max_batch=batch)
                try:
                    pipe = eng.model(work.folder).pipeline
                    if production:
                        r.notes.append("worker.engine.memory_modes path (IMG2IMG_COMPILE=true)")
                    elif mode == "eager-backend":
                        pipe.unet = torch.compile(pipe.unet, backend="eager")
                        r.notes.append("dynamo with the eager backend: exercises the "
                                       "compile path without inductor (CPU smoke)")
                    else:
                        pipe.unet = torch.compile(pipe.unet, mode=mode)
                        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode)
                    if "cudagraphs" not in mode and mode in ("reduce-overhead",
                                                               "max-autotune"):
                        r.notes.append("CUDA graphs on" if self.gpu else
                                       "no CUDA graphs on a CPU")
                    return run_engine(eng, work, items[:max(images, batch)], batch, r,
                                      warmup_batches=2)
                finally:
                    eng.close()
                    torch._dynamo.reset()
            self.case(CaseResult(f"compile-{mode}-b{batch}", work.model,
                                 f"ours: fast + torch.compile ({mode}), batch {batch}; "
                                 "warm-up excluded", batch), work, body)


def markdown(doc: dict) -> str:
    gib = 1024 ** 3

    def fmt(value, spec=".3f", scale=1.0):
        return "" if value is None else format(value / scale, spec)

    lines = []
    if doc.get("label"):
        lines.append(f"**{doc['label']}** (device: {doc.get('device')})\n")
    else:
        lines.append(f"Device: {doc.get('device')}, dense fp16 peak "
                     f"{doc.get('dense_fp16_peak_tflops')} TFLOP/s\n")
    for model, work in doc.get("workloads", {}).items():
        lines.append(f"- {model}: {work['size']} px, {work['steps']} steps x strength "
                     f"{work['strength']} = {work['denoising_steps']} denoising steps, "
                     f"guidance {work['guidance']}")
    lines.append("")
    lines.append("| model | case | batch | images | images/s | s/image | vs case 1 | "
                 "vs case 2 | warm-up s | load s | alloc peak GiB | device peak GiB | "
                 "GFLOP/image | TFLOP/s | % of peak | max abs diff vs case 1 | status |")
    lines.append("|" + "---|" * 17)
    for case in doc["cases"]:
        fraction = case.get("fraction_of_peak")
        lines.append("| " + " | ".join([
            case["model"], case["name"], str(case["batch_size"]), str(case["images"]),
            fmt(case["images_per_s"]), fmt(case["s_per_image"]),
            fmt(case["vs_original"], ".2f"), fmt(case["vs_original_lean"], ".2f"),
            fmt(case["warmup_s"], ".2f"), fmt(case["load_s"], ".2f"),
            fmt(case["peak_allocated_bytes"], ".2f", gib),
            fmt(case["device_used_peak_bytes"], ".2f", gib),
            fmt(case["flops_per_image"], ".1f", 1e9), fmt(case["achieved_tflops"], ".2f"),
            "" if fraction is None else f"{100 * fraction:.1f}",
            fmt(case["max_abs_diff_vs_original"], ".0f"), case["status"],
        ]) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=str(default_model_dir()),
                   help="where the random-weight models are built and loaded from")
    p.add_argument("--images", type=int, default=None,
                   help="images per case for ours (default 32 on GPU, 8 on CPU)")
    p.add_argument("--baseline-images", type=int, default=None,
                   help="images for cases 1 and 2, which are slow (default 4 / 2)")
    p.add_argument("--batch-sizes", default=None, help="fast batch sizes (1,4,8,16)")
    p.add_argument("--compile-batch", type=int, default=8)
    p.add_argument("--balanced-batch", type=int, default=8)
    p.add_argument("--compile-modes", default=None,
                   help="comma list; GPU default: reduce-overhead,max-autotune-no-cudagraphs;"
                        " 'eager-backend' runs dynamo without inductor")
    p.add_argument("--lean-batch-sizes", default=None,
                   help="batch sizes of the lean cases (GPU default 1,4; CPU 1)")
    p.add_argument("--cases",
                   default="original,original-lean,fast,balanced,lean,lean-group,compile")
    p.add_argument("--sdxl", action="store_true", help="SDXL at 1024 px as a second model")
    p.add_argument("--sdxl-cases", default="original,fast,balanced")
    p.add_argument("--sdxl-batch-sizes", default="1,4")
    p.add_argument("--size", type=int, default=None, help="px (512 GPU, 128 CPU)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--strength", type=float, default=0.8)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--quick", action="store_true", help="few images, small sizes")
    p.add_argument("--no-flops-crosscheck", dest="flops_crosscheck", action="store_false")
    p.add_argument("--out", default="bench-results/engine.json")
    p.add_argument("--markdown", default=None, help="also write the table here")
    args = p.parse_args(argv)
    gpu = cuda()
    quick = args.quick
    if args.images is None:
        args.images = (8 if quick else 32) if gpu else (4 if quick else 8)
    if args.baseline_images is None:
        args.baseline_images = 4 if gpu and not quick else 2
    if args.batch_sizes is None:
        args.batch_sizes = "1,4,8,16" if gpu and not quick else "1,4"
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.lean_batch_sizes is None:
        args.lean_batch_sizes = "1,4" if gpu else "1"
    args.lean_batch_sizes = [int(b) for b in args.lean_batch_sizes.split(",")]
    if args.compile_modes is None:
        args.compile_modes = ("reduce-overhead," + PRODUCTION_COMPILE_MODE) if gpu \
            else "eager-backend"
    args.compile_modes = [m for m in args.compile_modes.split(",") if m]
    args.size = args.size or (512 if gpu else 128)
    if quick and not gpu:
        args.steps = min(args.steps, 10)
        args.compile_batch = min(args.compile_batch, 4)
        args.balanced_batch = min(args.balanced_batch, 4)
    args.cases = [c for c in args.cases.split(",") if c]
    args.sdxl_cases = [c for c in args.sdxl_cases.split(",") if c]
    args.sdxl_batch_sizes = [int(b) for b in args.sdxl_batch_sizes.split(",")]
    return args


def main(argv: list[str] | None = None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from common.logs import quiet_libraries

    quiet_libraries()
    args = parse_args(argv)
    bench = Bench(args)
    model_dir = Path(args.model_dir)
    if bench.gpu:
        folder, seconds = ensure_model(model_dir, "sd15", device="cuda")
        bench.info["model_builds"]["sd15"] = round(seconds, 2)
        work = Workload("sd15", str(folder), args.size, args.steps, args.strength,
                        args.guidance)
    else:
        from worker.engine.tiny_model import ensure_tiny_model

        folder = ensure_tiny_model(model_dir)
        work = Workload("tiny", str(folder), args.size, args.steps, args.strength,
                        args.guidance)
    bench.run_model(work, args.cases, args.batch_sizes, args.images, args.baseline_images)
    if args.sdxl:
        if bench.gpu:
            folder, seconds = ensure_model(model_dir, "sdxl", device="cuda")
            bench.info["model_builds"]["sdxl"] = round(seconds, 2)
            xl = Workload("sdxl", str(folder), 1024, args.steps, args.strength,
                          args.guidance)
            bench.run_model(xl, [c for c in args.sdxl_cases if c != "compile"],
                            args.sdxl_batch_sizes, max(args.sdxl_batch_sizes),
                            min(2, args.baseline_images))
        else:
            bench.info["sdxl"] = "skipped: no CUDA (full-size builds are GPU-only)"
    if "compile" in args.cases:
        bench.run_compile(work, args.images)
    bench.info["seconds"] = round(time.time() - bench.info["started"], 1)
    bench.save()
    doc = json.loads(Path(args.out).read_text())
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
