"""The ``loras`` field on the producer's side: specs, the jobs-file column, ``--lora``,
the allow-list when the producer knows it, and job ids of jobs without adapters."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

from contract.errors import InvalidJob, LoraNotAllowed
from contract.job import GenerationParams, derive_job_id, parse_job, validate_params
from contract.loras import check_lora_allowed, parse_lora_spec
from producer.cli import app

runner = CliRunner()


def drain(sqs, queue_url: str) -> dict:
    jobs = []
    while got := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                     WaitTimeSeconds=0).get("Messages", []):
        jobs.extend(parse_job(m["Body"]) for m in got)
    return {j.input.key: j for j in jobs}


@pytest.mark.parametrize("spec, ref, scale", [
    ("org/style", "org/style", 1.0),
    ("org/style:0.5", "org/style", 0.5),
    ("s3://bkt/loras/a.safetensors:-1", "s3://bkt/loras/a.safetensors", -1.0),
    ("s3://bkt/loras/a.safetensors", "s3://bkt/loras/a.safetensors", 1.0),
    ("/abs/path/style:2", "/abs/path/style", 2.0),
])
def test_specs_split_at_the_last_colon_only_before_a_number(spec, ref, scale) -> None:
    assert parse_lora_spec(spec).model_dump() == {"ref": ref, "scale": scale}


def test_bad_loras_are_refused_naming_the_problem() -> None:
    with pytest.raises(InvalidJob, match="--lora 'x:9'.*less than or equal to 4"):
        parse_lora_spec("x:9")
    with pytest.raises(InvalidJob, match="at most 4"):
        validate_params(model="tiny", prompt="", loras=[{"ref": f"a/{i}"} for i in range(5)])
    with pytest.raises(InvalidJob, match="each LoRA may appear once"):
        validate_params(model="tiny", prompt="", loras=[{"ref": "a/b"}, {"ref": "a/b"}])


def test_the_allow_list_matches_patterns_and_refuses_parent_segments() -> None:
    check_lora_allowed("s3://loras/team/style.safetensors", ["s3://loras/*"])
    with pytest.raises(LoraNotAllowed, match="IMG2IMG_ALLOWED_LORAS is empty"):
        check_lora_allowed("org/style", [])
    with pytest.raises(LoraNotAllowed, match=r"'\.\.'"):
        check_lora_allowed("s3://loras/../private/x.safetensors", ["s3://loras/*"])


def test_a_job_without_loras_keeps_the_id_it_had_before_the_field() -> None:
    params = GenerationParams(model="tiny", prompt="p")
    before = json.dumps({"input": "s3://b/k#e", "params": {
        k: v for k, v in params.model_dump(mode="json").items() if k != "loras"}},
        sort_keys=True, separators=(",", ":"))
    assert derive_job_id("s3://b/k#e", params) == hashlib.sha256(
        before.encode()).hexdigest()[:32]
    with_lora = params.model_copy(update={"loras": (parse_lora_spec("org/style"),)})
    assert derive_job_id("s3://b/k#e", with_lora) != derive_job_id("s3://b/k#e", params)


def test_the_jobs_file_column_and_the_flag_reach_the_messages(fleet, s3, sqs, tmp_path):
    for key in ("in/a.png", "in/b.png", "in/c.png"):
        s3.put_object(Bucket=fleet.bucket, Key=key, Body=b"x")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,loras\n"
                    "a.png,org/style:0.5;s3://bkt/detail.safetensors\n"
                    "b.png,\n"
                    "c.png,org/other\n")
    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "--jobs", str(jobs),
                                 "-m", "tiny", "-p", "p", "--lora", "org/default:0.7"])
    assert result.exit_code == 0, result.output
    by_key = drain(sqs, fleet.queue_url)
    assert [lora.model_dump() for lora in by_key["in/a.png"].loras] == [
        {"ref": "org/style", "scale": 0.5}, {"ref": "s3://bkt/detail.safetensors", "scale": 1.0}]
    # An empty cell keeps the command line's --lora; a filled one replaces it.
    assert [lora.label for lora in by_key["in/b.png"].loras] == ["org/default:0.7"]
    assert [lora.label for lora in by_key["in/c.png"].loras] == ["org/other:1"]


def test_the_producer_refuses_what_the_fleet_would_when_it_knows_the_list(fleet, s3, sqs,
                                                                           tmp_path):
    s3.put_object(Bucket=fleet.bucket, Key="in/a.png", Body=b"x")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"input": "a.png", "loras": ["org/not-ours", "bad:99"]}) + "\n")
    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "--jobs", str(jobs),
                                 "-m", "tiny", "-p", "p"],
                           env={"IMG2IMG_ALLOWED_LORAS": "org/ours-*"})
    assert result.exit_code != 0
    assert "line 1: loras" in result.output and "bad:99" in result.output
    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "tiny", "-p",
                                 "p", "--lora", "org/not-ours"],
                           env={"IMG2IMG_ALLOWED_LORAS": "org/ours-*"})
    assert result.exit_code != 0
    assert "org/not-ours" in result.output and "IMG2IMG_ALLOWED_LORAS" in result.output
    assert drain(sqs, fleet.queue_url) == {}
