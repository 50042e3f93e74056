"""The benchmarks run end to end (CPU smoke: tiny model, few jobs) and report every case
with sane numbers. Performance itself is not asserted: CPU timings here are noise."""

from __future__ import annotations

import json

import pytest

from bench import engine_bench, engine_workload, overlap_bench

pytestmark = pytest.mark.timeout(180)

ENGINE_CASES = {"original", "original-lean", "fast-b1", "fast-b2", "balanced-b2",
                "lean-b1", "lean-group-b1", "compile-eager-backend-b2"}


def test_engine_bench_quick_cpu_reports_every_case(model_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_workload, "cuda", lambda: False)  # the CPU path, always
    out = tmp_path / "engine.json"
    doc = engine_bench.main(["--quick", "--images", "2", "--baseline-images", "1",
                             "--batch-sizes", "1,2", "--compile-batch", "2",
                             "--balanced-batch", "2", "--steps", "5", "--size", "64",
                             "--cases", "original,original-lean,fast,balanced,lean,"
                             "lean-group,compile",
                             "--model-dir", str(model_cache), "--out", str(out),
                             "--markdown", str(tmp_path / "engine.md")])
    assert json.loads(out.read_text()) == doc
    assert doc["label"] == engine_bench.CPU_SMOKE_LABEL
    cases = {case["name"]: case for case in doc["cases"]}
    assert set(cases) == ENGINE_CASES
    for case in cases.values():
        assert case["status"] == "ok", case
        assert case["images_per_s"] > 0 and case["s_per_image"] > 0
        assert case["flops_per_image"] > 0 and case["achieved_tflops"] > 0
    assert cases["original"]["vs_original"] == 1.0
    assert cases["original-lean"]["vs_original_lean"] == 1.0
    assert cases["fast-b2"]["images"] == 2
    assert cases["lean-b1"]["vs_original_lean"] > 0  # the lean target's ratio is reported
    # Same seed, same fp32 arithmetic up to fused QKV: outputs agree to a grey level or two.
    assert cases["fast-b1"]["max_abs_diff_vs_original"] <= 8
    flops = doc["flops"]["tiny"]
    assert flops["crosscheck_ratio"] == pytest.approx(1.0, rel=0.01)
    assert flops["2"]["total"] == pytest.approx(2 * flops["1"]["total"], rel=0.01)
    assert "| original |" in (tmp_path / "engine.md").read_text()


def test_engine_bench_lora_cases_report_swaps_and_streams(model_cache, tmp_path,
                                                         monkeypatch):
    monkeypatch.setattr(engine_workload, "cuda", lambda: False)
    doc = engine_bench.main(["--cases", "lora", "--lora-images", "4", "--lora-batch", "2",
                             "--lora-rank", "4", "--lora-swaps", "4", "--lora-pools",
                             "1,4", "--steps", "4",
                             "--strength", "0.5", "--size", "64", "--model-dir",
                             str(model_cache), "--out", str(tmp_path / "lora.json")])
    cases = {case["name"]: case for case in doc["cases"]}
    assert set(cases) == {"lora-swap", "lora-none-b2", "lora-mix1-b2", "lora-mix4-b2"}
    assert all(case["status"] == "ok" for case in cases.values()), cases
    swap = doc["lora"]["swap"]
    assert swap["warm_swap_ms"] > 0 and swap["cold_load_ms"] > 0 and not swap["hotswap"]
    for name in ("lora-none-b2", "lora-mix1-b2", "lora-mix4-b2"):
        assert cases[name]["images"] == 4 and cases[name]["images_per_s"] > 0
    # One adapter keeps batches whole; four in windows of two split every window (the
    # first adapter is on from the warm-up call).
    assert "2 pipeline calls, 0 adapter swaps" in cases["lora-mix1-b2"]["notes"]
    assert "4 pipeline calls, 3 adapter swaps" in cases["lora-mix4-b2"]["notes"]


def test_overlap_bench_keeps_books(moto_endpoint):
    result = overlap_bench.run_overlap(jobs=16, latency=0.05, batch=8, size=128,
                                       endpoint=moto_endpoint)
    assert result["done"] == 16 and result["failed"] == 0
    assert 0 < result["engine_busy_fraction"] <= 1
    assert 0 < result["engine_busy_fraction_first_to_last_batch"] <= 1
    assert result["jobs_per_s"] > 0 and result["moto_alone_jobs_per_s"] > 0
    assert result["batches"] >= 2
    assert result["s3_requests_per_job"] >= 4  # claim, input, output, record, batch
    kinds = result["s3_requests_per_job_by_kind"]
    assert kinds["GET input"] == kinds["PUT output"] == kinds["PUT claim"] == 1
    assert kinds["PUT record"] == 1 and kinds["PUT counter"] > 0  # the batch has a manifest
    assert set(result["recorded_stage_ms"]) == {"download", "decode", "encode", "upload"}
    cpu = result["worker_cpu_ms_per_job_by_stage"]
    named = {k: v for k, v in cpu.items() if not k.startswith("everything else")}
    assert {"decode", "encode", "s3 PUT claim", "s3 GET input", "s3 PUT output",
            "sqs receive", "sqs delete"} <= set(named)
    assert all(v > 0 for v in named.values())
    # Stages are parts of the process's CPU (here moto shares the process, so more).
    assert sum(named.values()) <= result["worker_cpu_ms_per_job"] * 1.05
    assert len(result["engine_busy_fraction_by_quarter"]) == 4
    assert result["engine_wait_between_batches_ms"]["n"] == result["batches"] - 1
    table = overlap_bench.markdown(result)
    assert "engine busy fraction" in table and "worker CPU ms/job" in table


def test_flops_of_full_size_sd15_are_counted_on_meta():
    count = __import__("bench.flops", fromlist=["count_on_meta"]).count_on_meta(
        "sd15", batch=1, size=512, steps=50, strength=0.8, guidance_scale=7.5)
    assert count.denoising_steps == 40 and count.cfg
    # One CFG UNet forward at 512 px is ~1.6 TFLOP; the whole image ~68 TFLOP.
    assert 1.0e12 < count.unet_forward < 2.5e12
    assert 4e13 < count.total < 1e14


def test_png_bench_compares_the_three_encoders():
    from bench import png_bench

    rows = png_bench.run(size=64, repeat=1)
    assert {r["encoder"] for r in rows} == {"Pillow compress_level=1", "writer, stdlib zlib",
                                             "writer, zlib-ng"}
    assert len(rows) == 6 and all(r["cpu_ms"] > 0 and r["kib"] > 0 for r in rows)


def test_bench_moto_keeps_connections_alive():
    """The overlap bench's moto answers many requests on one connection, as S3 does."""
    import http.client
    from urllib.parse import urlsplit

    from bench.overlap_probes import moto_subprocess

    with moto_subprocess("keepalive") as (endpoint, pid):
        assert pid
        connection = http.client.HTTPConnection(urlsplit(endpoint).netloc, timeout=10)
        sockets, closing = [], []
        for _ in range(3):
            connection.request("GET", "/")
            response = connection.getresponse()
            response.read()
            sockets.append(connection.sock)
            closing.append(response.will_close)
        connection.close()
    assert closing == [False, False, False]
    assert sockets[0] is not None and sockets[0] is sockets[1] is sockets[2]


def test_s3_request_cpu_measures_both_clients():
    from bench import s3_request_cpu

    result = s3_request_cpu.main(["--requests", "5"])
    per_client = result["cpu_ms_per_request"]
    assert set(per_client) == {"direct", "botocore"}
    for measures in per_client.values():
        assert set(measures) == {"conditional PUT 58 KiB", "GET 58 KiB", "PUT 1 KiB JSON"}
        assert all(value > 0 for value in measures.values())


def test_codec_cpu_reports_both_formats():
    from bench import codec_cpu

    result = codec_cpu.main(["--images", "2"])
    assert set(result) == {"jpg", "png"}
    for measures in result.values():
        assert measures["decode_cpu_ms"] > 0 and measures["encode_cpu_ms"] > 0
        assert measures["images_per_s_2_threads"] > 0
