"""Worker parts against real things: heartbeat on a moto queue, model sources (S3 copy,
hub cache), VAE tiling, warm-up, message decoding."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from contract.errors import InvalidJob, ModelNotFound
from contract.settings import SettingsError, load_settings
from tests.support.clock import FakeClock
from tests.support.fleet import upload_tiny_model
from worker.batching import BatchKey, GenerationItem
from worker.engine.engine import Engine
from worker.engine.memory_modes import VAE_TILING_MIN_SIDE, set_vae_tiling_for
from worker.engine.s3_models import sync_s3_model
from worker.engine.tiny_model import ensure_tiny_model
from worker.fleet.heartbeat import Heartbeat
from worker.fleet.messages import EVENTS_BATCH_ID, decode_body
from worker.fleet.sqs_queue import MAX_VISIBILITY_SECONDS, SqsQueue
from worker.settings import WorkerSettings

# -- heartbeat ---------------------------------------------------------------------------

def test_heartbeat_extends_held_messages_and_respects_the_12h_cap(fleet, sqs):
    for i in range(3):
        sqs.send_message(QueueUrl=fleet.queue_url, MessageBody=f"m{i}")
    queue = SqsQueue(sqs, fleet.queue_url)
    clock = FakeClock()
    received = queue.receive(10, 1, 5, clock())
    assert len(received) == 3
    requested: list[list[tuple[str, int]]] = []
    real_change = queue.change_visibility

    def spy(entries):
        requested.append(list(entries))
        return real_change(entries)

    queue.change_visibility = spy  # type: ignore[method-assign]
    beat = Heartbeat(queue, visibility_timeout=40, interval=1, clock=clock)
    first, second, third = received
    beat.hold(first.receipt_handle, clock.now)
    beat.hold(second.receipt_handle, clock.now - (MAX_VISIBILITY_SECONDS - 60 - 25))
    beat.hold(third.receipt_handle, clock.now - MAX_VISIBILITY_SECONDS)
    beat.beat()
    asked = dict(requested[-1])
    assert asked[first.receipt_handle] == 40  # the full timeout
    assert asked[second.receipt_handle] == 25  # capped by what is left of 12 h
    assert third.receipt_handle not in asked  # past the cap: let SQS redeliver it
    assert third.receipt_handle not in beat.held()
    assert beat.extensions == 2
    # The extensions really happened: after the original 5 s only the capped-out message
    # is visible again; the two extended ones stay hidden.
    time.sleep(6)
    visible = sqs.receive_message(QueueUrl=fleet.queue_url, MaxNumberOfMessages=10,
                                  WaitTimeSeconds=1, VisibilityTimeout=30).get("Messages", [])
    assert [m["Body"] for m in visible] == ["m2"]
    beat.forget([first.receipt_handle])
    beat.beat()
    assert first.receipt_handle not in dict(requested[-1])


# -- model sources -----------------------------------------------------------------------

def _settings(model_cache: Path, **overrides) -> WorkerSettings:
    values = dict(model_cache=model_cache, allowed_models=["tiny"], device="cpu")
    values.update(overrides)
    return WorkerSettings(**values)


def _run_one(engine: Engine, model: str) -> Image.Image:
    key = BatchKey(model=model, width=64, height=64, steps=2, strength=0.5,
                   guidance_scale=7.5, scheduler="dpmsolver++")
    image = Image.new("RGB", (64, 64), (200, 100, 50))
    (out,) = engine.generate(key, [GenerationItem(image, "x", "", 1)]).images
    return out


def test_model_from_an_s3_prefix_is_synced_to_the_cache_and_loads(fleet, s3, model_cache,
                                                                   tmp_path):
    upload_tiny_model(s3, fleet.bucket, model_cache)
    s3.put_object(Bucket=fleet.bucket, Key="models/tiny/unet/pickled.bin", Body=b"pickle!")
    cache = tmp_path / "cache"
    folder = sync_s3_model(f"s3://{fleet.bucket}/models/tiny/", cache, s3)
    assert (folder / "model_index.json").is_file()
    assert not (folder / "unet" / "pickled.bin").exists(), "pickles are never fetched"
    engine = Engine(_settings(cache, allowed_models=[f"s3://{fleet.bucket}/models/*"]),
                    s3_client_factory=lambda: s3)
    assert _run_one(engine, f"s3://{fleet.bucket}/models/tiny/").size == (64, 64)
    with pytest.raises(ModelNotFound, match="model_index.json"):
        sync_s3_model(f"s3://{fleet.bucket}/models/nothing-here/", cache, s3)


def test_hub_id_loads_from_the_hub_cache_offline(model_cache, tmp_path):
    """A real model id goes through the same code when a hub cache copy is present.

    A subprocess, because huggingface_hub reads HF_HUB_CACHE/HF_HUB_OFFLINE at import.
    """
    tiny = ensure_tiny_model(model_cache)
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--acme--tiny-sd"
    shutil.copytree(tiny, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    Image.new("RGB", (80, 48), (10, 20, 30)).save(tmp_path / "in.png")
    env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1",
               IMG2IMG_MODEL_CACHE=str(model_cache), IMG2IMG_ALLOWED_MODELS="acme/*")
    worker = str(Path(sys.executable).with_name("img2img-worker"))
    common = [worker, "run", str(tmp_path / "in.png"), "--steps", "2", "--max-side", "64"]
    ok = subprocess.run([*common, "-m", "acme/tiny-sd", "--output-dir", str(tmp_path / "a")],
                        env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert Image.open(tmp_path / "a" / "in.png").size == (80, 48)
    missing = subprocess.run([*common, "-m", "acme/not-cached", "--output-dir",
                              str(tmp_path / "b")], env=env, capture_output=True, text=True,
                             timeout=300)
    # A model neither cached nor downloadable is one error, up front, before any image.
    assert missing.returncode == 2
    assert "acme/not-cached" in missing.stderr and "not in the Hugging Face cache" in (
        missing.stderr)
    assert not (tmp_path / "b" / "results.jsonl").exists()


# -- VAE tiling and warm-up --------------------------------------------------------------

def test_vae_tiles_only_for_large_images_or_lean(model_cache):
    engine = Engine(_settings(model_cache))
    pipe = engine.model("tiny").pipeline
    set_vae_tiling_for(pipe, "fast", 512, 512)
    assert pipe.vae.use_tiling is False
    set_vae_tiling_for(pipe, "fast", VAE_TILING_MIN_SIDE, 512)
    assert pipe.vae.use_tiling is True
    set_vae_tiling_for(pipe, "lean", 64, 64)
    assert pipe.vae.use_tiling is True


def test_warm_up_loads_and_runs_each_shape_once(model_cache):
    settings = _settings(model_cache, warmup_shapes="64x64,64x128", max_batch_size=2)
    assert settings.warmup_sizes() == [(64, 64), (64, 128)]
    engine = Engine(settings)
    calls = []
    engine.warm_up(["tiny"], settings.warmup_sizes(), on_step=lambda: calls.append(1) or False)
    assert engine.cache.loads == 1 and ("tiny", "fast") in engine.cache
    assert len(calls) == 2 * 18  # two shapes x int(25 * 0.75) denoising steps


@pytest.mark.parametrize("shape", ["512", "510x512", "16x16", "axb"])
def test_bad_warmup_shape_names_the_variable(monkeypatch, shape):
    monkeypatch.setenv("IMG2IMG_WARMUP_SHAPES", shape)
    with pytest.raises(SettingsError, match="IMG2IMG_WARMUP_SHAPES"):
        load_settings(WorkerSettings)


# -- message decoding --------------------------------------------------------------------

def _event(key: str, name: str = "ObjectCreated:Put") -> str:
    return json.dumps({"Records": [{
        "eventSource": "aws:s3", "eventName": name,
        "s3": {"bucket": {"name": "photos"}, "object": {"key": key, "eTag": "abc"}}}]})


def test_s3_notification_becomes_a_job_with_event_defaults(tmp_path):
    settings = _settings(tmp_path, default_models="tiny", event_steps=10, event_strength=0.6)
    decoded = decode_body(_event("uploads/my+cat%281%29.PNG"), settings)
    (job,) = decoded.jobs
    assert job.input.key == "uploads/my cat(1).PNG"  # S3 URL-encodes keys in events
    assert job.output.key.startswith("outputs/my cat(1).") and job.output.bucket == "photos"
    assert (job.model, job.steps, job.strength, job.batch_id) == ("tiny", 10, 0.6,
                                                                  EVENTS_BATCH_ID)
    again = decode_body(_event("uploads/my+cat%281%29.PNG"), settings).jobs[0]
    assert again.job_id == job.job_id  # the same upload makes the same job


@pytest.mark.parametrize("body, field, reason", [
    (json.dumps({"Event": "s3:TestEvent"}), "ignored", "test event"),
    (_event("outputs/x.abc.png"), "ignored", "outputs/x.abc.png"),
    (_event("uploads/notes.txt"), "ignored", "notes.txt"),
    (_event("uploads/a.png", "ObjectRemoved:Delete"), "ignored", "ObjectRemoved"),
    ("not json", "poison", "not JSON"),
    ("[1, 2]", "poison", "not an object"),
    (json.dumps({"hello": "world"}), "poison", "not a job"),
    (json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}), "poison", "malformed"),
])
def test_bodies_that_are_not_jobs(tmp_path, body, field, reason):
    decoded = decode_body(body, _settings(tmp_path))
    assert decoded.jobs == [] and decoded.bad_jobs == []
    assert reason.lower() in (getattr(decoded, field) or "").lower()


def test_invalid_job_with_an_output_is_recordable(tmp_path):
    body = json.dumps({"job_id": "abcdefgh1234", "batch_id": "b", "model": "tiny",
                       "prompt": "x", "steps": 0, "input": {"bucket": "bkt", "key": "a.png"},
                       "output": {"bucket": "bkt", "key": "out/a.abcdefgh1234.png"}})
    decoded = decode_body(body, _settings(tmp_path))
    (bad,) = decoded.bad_jobs
    assert isinstance(bad.error, InvalidJob) and "steps" in str(bad.error)
    assert bad.output.key == "out/a.abcdefgh1234.png" and bad.input_uri == "s3://bkt/a.png"


def test_invalid_job_naming_an_output_it_could_not_derive_is_poison(tmp_path):
    """It could otherwise overwrite another job's record with its failure."""
    body = json.dumps({"job_id": "abcdefgh1234", "batch_id": "b", "model": "tiny",
                       "prompt": "x", "steps": 0, "input": {"bucket": "bkt", "key": "a.png"},
                       "output": {"bucket": "bkt", "key": "out/a.0123456789ab.png"}})
    decoded = decode_body(body, _settings(tmp_path))
    assert decoded.bad_jobs == [] and "not a job" in decoded.poison
