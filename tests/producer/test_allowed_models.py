"""``enqueue`` refuses up front the models the fleet's allow-list refuses."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from contract.errors import ModelNotAllowed
from contract.model_names import check_allowed
from producer.cli import app
from tests.support.queues import depth, drain, put_images

runner = CliRunner()


def test_models_the_fleet_refuses_are_refused_before_anything_is_sent(fleet, s3, sqs,
                                                                       monkeypatch):
    put_images(s3, fleet.bucket, ["in/a.png"])
    monkeypatch.setenv("IMG2IMG_ALLOWED_MODELS", "tiny,s3://models/*")

    refused = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "tiny",
                                  "-m", "sd15", "-p", "p"])
    escaping = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/",
                                   "-m", "s3://models/../secrets/", "-p", "p"])
    allowed = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "tiny",
                                  "-m", "s3://models/mine/", "-p", "p"])

    assert refused.exit_code == 2, refused.output
    assert "model 'sd15' is not allowed: add it, or a pattern matching it" in refused.stderr
    assert "to IMG2IMG_ALLOWED_MODELS (now tiny,s3://models/*)" in refused.stderr
    assert escaping.exit_code == 2 and "'..'" in escaping.stderr, escaping.output
    assert allowed.exit_code == 0, allowed.output
    assert {j.model for j in drain(sqs, fleet.queue_url)} <= {"tiny", "s3://models/mine/"}


def test_a_jobs_file_row_with_a_refused_model_names_its_line(fleet, s3, sqs, monkeypatch,
                                                             tmp_path):
    put_images(s3, fleet.bucket, ["in/a.png", "in/b.png"])
    monkeypatch.setenv("IMG2IMG_ALLOWED_MODELS", "tiny")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,model\na.png,tiny\nb.png,sdxl\n")

    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "--jobs", str(jobs),
                                 "-m", "tiny", "-p", "p"])

    assert result.exit_code == 2, result.output
    assert "line 3: model 'sdxl' is not allowed" in result.stderr
    assert depth(sqs, fleet.queue_url) == 0


def test_without_an_allow_list_the_producer_leaves_the_check_to_the_workers(fleet, s3, sqs):
    put_images(s3, fleet.bucket, ["in/a.png"])

    result = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "org/any-model",
                                 "-p", "p"])

    assert result.exit_code == 0, result.output
    assert depth(sqs, fleet.queue_url) == 1


def test_the_shared_rule_admits_an_alias_by_its_hub_id_and_back():
    check_allowed("sd15", ["stable-diffusion-v1-5/*"])
    check_allowed("stabilityai/sdxl-turbo", ["sdxl-turbo"])
    with pytest.raises(ModelNotAllowed, match="'sd21' is not allowed"):
        check_allowed("sd21", ["sd15"])


def test_what_an_aliased_family_would_ignore_is_refused_before_anything_is_sent(
        fleet, s3, sqs):
    put_images(s3, fleet.bucket, ["in/a.png"])

    flux = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "flux-dev",
                               "-p", "p", "--negative-prompt", "blurry"])
    turbo = runner.invoke(app, ["enqueue", f"s3://{fleet.bucket}/in/", "-m", "sd-turbo",
                                "-p", "p", "--strength", "0.3"])

    assert flux.exit_code == 2 and "Flux.1 [dev]" in flux.stderr, flux.output
    assert "negative_prompt" in flux.stderr
    assert turbo.exit_code == 2 and "use steps >= 4" in turbo.stderr, turbo.output
    assert depth(sqs, fleet.queue_url) == 0
