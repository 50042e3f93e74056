"""Both CLIs: every flag has help, choices are checked by the flag, --version, and the
producer's --log-level after the command."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from contract.job import Scheduler
from producer.cli import app as producer_app
from tests.support.paths import REPO
from worker.cli import app as worker_app
from worker.settings import MemoryMode

runner = CliRunner()


def visible_parameters(app: typer.Typer) -> list[tuple[str, Any]]:
    """(command name, parameter) for every parameter --help shows."""
    group = typer.main.get_command(app)
    found = [("", p) for p in group.params]
    for name, command in group.commands.items():
        found += [(name, p) for p in command.params]
    return [(name, p) for name, p in found if not getattr(p, "hidden", False)]


def quoted(choices: tuple[str, ...]) -> str:
    return ", ".join(f"'{c}'" for c in choices)


def flat(output: str) -> str:
    """The CLI's output without the error box and line wrapping."""
    return " ".join(output.replace("│", " ").split())


@pytest.mark.parametrize("app", [producer_app, worker_app], ids=["producer", "worker"])
def test_every_visible_flag_and_argument_has_help(app):
    parameters = visible_parameters(app)
    missing = [f"{command} {p.opts[0]}" for command, p in parameters
               if not (getattr(p, "help", None) or "").strip()]

    assert len(parameters) > 15
    assert not missing, f"no help text: {missing}"


def test_memory_mode_and_scheduler_errors_name_the_flag_and_its_choices():
    turbo = runner.invoke(worker_app, ["run", "--memory-mode", "turbo"])
    worker_scheduler = runner.invoke(worker_app, ["run", "--scheduler", "karras"])
    producer_scheduler = runner.invoke(producer_app, ["enqueue", "s3://b/in/",
                                                      "--scheduler", "karras"])

    assert turbo.exit_code == 2 and "--memory-mode" in turbo.output, turbo.output
    assert "IMG2IMG_MEMORY_MODE" not in turbo.output
    # The choices are the settings' and the contract's own types, so they cannot drift.
    assert f"'turbo' is not one of {quoted(MemoryMode.__args__)}" in flat(turbo.output)
    for result in (worker_scheduler, producer_scheduler):
        assert result.exit_code == 2 and "--scheduler" in result.output, result.output
        assert f"'karras' is not one of {quoted(Scheduler.__args__)}" in flat(result.output)


@pytest.mark.parametrize("script", ["img2img-producer", "img2img-worker"])
def test_version_comes_from_the_package_metadata(script):
    done = subprocess.run([str(Path(sys.executable).with_name(script)), "--version"],
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"img2img-fleet {metadata.version('img2img-fleet')}"


def test_producer_log_level_works_after_the_command(fleet):
    env = {**os.environ, **fleet.environment(), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "producer.cli", "status"]

    quiet = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    after = subprocess.run(command + ["--log-level", "debug"], env=env, capture_output=True,
                           text=True, timeout=120)
    before = subprocess.run(command[:3] + ["--log-level", "DEBUG", "status"], env=env,
                            capture_output=True, text=True, timeout=120)
    bad = subprocess.run(command + ["--log-level", "loud"], env=env, capture_output=True,
                         text=True, timeout=120)

    assert quiet.returncode == after.returncode == before.returncode == 0, after.stderr
    assert "DEBUG botocore" not in quiet.stderr
    assert "DEBUG botocore" in after.stderr and "DEBUG botocore" in before.stderr
    assert bad.returncode == 2 and "--log-level" in bad.stderr and "'loud'" in bad.stderr


@pytest.mark.parametrize("app", [producer_app, worker_app], ids=["producer", "worker"])
def test_h_is_help_on_every_command(app):
    group = typer.main.get_command(app)
    for name in ["", *group.commands]:
        result = runner.invoke(app, [name, "-h"] if name else ["-h"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output and "--help" in result.output, name


def test_completion_can_be_installed():
    result = runner.invoke(producer_app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output


def test_region_profile_and_endpoint_flags_reach_boto3(fleet, tmp_path):
    """No AWS variable in the environment: the flags alone point at the emulator."""
    config = tmp_path / "aws-config"
    config.write_text("[profile other]\nregion = eu-west-3\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "IMG2IMG_"))}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_CONFIG_FILE=str(config), PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "producer.cli", "--endpoint-url", fleet.endpoint_url]

    flags = subprocess.run([*command, "--region", "us-east-1", "status", "--queue-url",
                            fleet.queue_url], env=env, capture_output=True, text=True,
                           timeout=120)
    profile = subprocess.run([*command, "--profile", "other", "status", "--queue-url",
                              fleet.queue_url], env=env, capture_output=True, text=True,
                             timeout=120)

    assert flags.returncode == 0, flags.stderr
    assert f"queue {fleet.queue_url}: visible 0" in flags.stdout
    # The profile's region is eu-west-3, where the emulator has no such queue.
    assert profile.returncode == 2 and "NonExistentQueue" in profile.stderr, profile.stderr


def test_the_region_comes_from_an_aws_queue_url_when_none_is_set(monkeypatch, tmp_path):
    from common.aws import default_region_from_queue, make_session, region_of_queue_url

    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    default_region_from_queue("http://127.0.0.1:4566/123456789012/q")
    assert make_session().region_name is None  # an emulator's URL names no region

    default_region_from_queue("https://sqs.eu-central-1.amazonaws.com/123456789012/jobs")
    assert make_session().region_name == "eu-central-1"
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    default_region_from_queue("https://sqs.ap-south-1.amazonaws.com/123456789012/jobs")
    assert make_session().region_name == "us-west-2"  # a configured region wins
    assert region_of_queue_url("https://us-east-2.queue.amazonaws.com/1/q") == "us-east-2"


@pytest.mark.parametrize("app", [producer_app, worker_app], ids=["producer", "worker"])
def test_help_shows_what_to_type_not_python_types(app):
    group = typer.main.get_command(app)
    for name in ["", *group.commands]:
        result = runner.invoke(app, [name, "--help"] if name else ["--help"],
                               env={"COLUMNS": "100"})
        assert result.exit_code == 0, result.output
        for stray in ("<bool>", "<list[", "{"):
            assert stray not in result.output, (name, stray, result.output)
    fetch = runner.invoke(producer_app, ["fetch", "--help"], env={"COLUMNS": "100"})
    run = runner.invoke(worker_app, ["run", "--help"], env={"COLUMNS": "100"})
    assert "fetch [OPTIONS] DEST" in fetch.output
    assert "run [OPTIONS] [INPUTS]..." in run.output
    # Each scheduler is named whole on one line, not cut by a narrow column.
    assert all(any(choice in line for line in run.output.splitlines())
               for choice in Scheduler.__args__)


def _enqueue_two(fleet, s3, *flags: str, tty: bool) -> str:
    """``img2img-producer [flags] enqueue`` of two images; its stderr, from a terminal
    (a pseudo-terminal) or from a pipe."""
    import pty

    for key in ("in/a.png", "in/b.png"):
        s3.put_object(Bucket=fleet.bucket, Key=key, Body=b"x")
    env = {**os.environ, **fleet.environment(), "PYTHONPATH": str(REPO), "COLUMNS": "120"}
    command = [sys.executable, "-m", "producer.cli", *flags, "enqueue",
               f"s3://{fleet.bucket}/in/", "-m", "tiny", "-p", "p"]
    if not tty:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr
    leader, follower = pty.openpty()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=follower,
                          timeout=120)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert done.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_bars_show_n_of_n_on_a_terminal_and_nothing_in_a_log(fleet, s3):
    terminal = _enqueue_two(fleet, s3, tty=True)
    logged = _enqueue_two(fleet, s3, tty=False)
    quiet = _enqueue_two(fleet, s3, "--quiet", tty=True)

    assert "enqueue" in terminal and "2/2" in terminal
    assert "━" not in logged and "2/2" not in logged
    assert "━" not in quiet and "2/2" not in quiet


def test_verbose_logs_more(fleet):
    env = {**os.environ, **fleet.environment(), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "producer.cli"]

    plain = subprocess.run([*command, "status"], env=env, capture_output=True, text=True,
                           timeout=120)
    loud = subprocess.run([*command, "-vv", "status"], env=env, capture_output=True,
                          text=True, timeout=120)

    assert plain.returncode == loud.returncode == 0, loud.stderr
    assert "DEBUG botocore" not in plain.stderr and "DEBUG botocore" in loud.stderr


def test_an_error_is_one_line_however_its_message_ends():
    from common.cli import clear_errors
    from contract.errors import InvalidJob

    app = typer.Typer()

    @app.command()
    def broken() -> None:
        with clear_errors():
            raise InvalidJob("The specified queue does not exist.\n\n")

    result = runner.invoke(app, [])
    assert result.exit_code == 2
    assert result.stderr == "error: The specified queue does not exist.\n"


def test_run_without_inputs_names_the_default_it_looked_for(tmp_path):
    done = subprocess.run([str(Path(sys.executable).with_name("img2img-worker")), "run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)

    assert done.returncode == 2, done.stderr
    assert "no INPUTS given, and the default folder data/input_images is not in " \
        f"{tmp_path}" in done.stderr
