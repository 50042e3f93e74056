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
7. ``lora-*``: LoRA adapters per job: one swap's cost, and streams mixing 1, 4 and 16
   adapters (bench/lora_cases.py).

On a GPU the model is full-size SD 1.5 at 512 px (and SDXL at 1024 px with --sdxl)
with random weights. Without CUDA every case runs on the tiny model at a small size:
a CPU smoke run that checks the benchmark works, not a performance result.

    PYTHONPATH=. python -m bench.engine_bench --out bench-results/engine.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import engine_workload
from bench.devstats import machine_info
from bench.engine_report import markdown
from bench.engine_runs import batch_key, make_engine, run_engine, run_original
from bench.engine_workload import CaseResult, Measure, Workload, make_items, release, to_array
from bench.flops import count_call_flops, count_pipeline_flops, dense_peak_tflops
from bench.models import default_model_dir, ensure_model

PRODUCTION_COMPILE_MODE = "max-autotune-no-cudagraphs"
CPU_SMOKE_LABEL = "CPU smoke run, not a performance result"


def cuda() -> bool:
    return engine_workload.cuda()


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
                   default="original,original-lean,fast,balanced,lean,lean-group,compile,lora")
    p.add_argument("--lora-images", type=int, default=None,
                   help="jobs per LoRA stream (default 64 on GPU, 16 on CPU)")
    p.add_argument("--lora-batch", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lora-swaps", type=int, default=20)
    p.add_argument("--lora-pools", default="1,4,16", help="adapters per LoRA stream")
    p.add_argument("--lora-compile", action="store_true",
                   help="LoRA cases with IMG2IMG_COMPILE (hot-swap slots)")
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
    if args.lora_images is None:
        args.lora_images = 64 if gpu else 16
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
    if "lora" in args.cases:
        from bench.lora_cases import run_lora_cases

        run_lora_cases(bench, work, args.lora_images, args.lora_batch, args.lora_rank,
                       args.lora_swaps, tuple(int(n) for n in args.lora_pools.split(",")))
    bench.info["seconds"] = round(time.time() - bench.info["started"], 1)
    bench.save()
    doc = json.loads(Path(args.out).read_text())
    print(markdown(doc))
    return doc


if __name__ == "__main__":
    main()
