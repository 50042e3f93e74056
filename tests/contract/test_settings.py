"""Settings: IMG2IMG_* variables, list values, a .env file, errors naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contract.errors import InvalidJob, is_permanent
from contract.settings import DEFAULT_PROMPTS, CommonSettings, SettingsError, load_settings
from worker.settings import BUILTIN_ALIASES, WorkerSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No IMG2IMG_* from the outside and a cwd without a .env file."""
    for name in list(os.environ):
        if name.upper().startswith("IMG2IMG_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults() -> None:
    settings = load_settings(WorkerSettings)
    assert settings.allowed_models == BUILTIN_ALIASES
    assert settings.default_prompts == DEFAULT_PROMPTS
    assert settings.memory_mode == "fast" and settings.max_batch_size == 8


def test_comma_separated_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2IMG_ALLOWED_MODELS", " tiny, sd15 ,s3://models/*,")
    monkeypatch.setenv("IMG2IMG_DEFAULT_PROMPTS", "a cat,a dog")
    monkeypatch.setenv("IMG2IMG_DEFAULT_MODELS", "tiny")
    settings = load_settings(WorkerSettings)
    assert settings.allowed_models == ["tiny", "sd15", "s3://models/*"]
    assert settings.default_prompts == ["a cat", "a dog"]
    assert settings.default_models == ["tiny"]


def test_json_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2IMG_ALLOWED_MODELS", '["tiny", "org/model"]')
    # A JSON list is how a prompt containing a comma is written.
    monkeypatch.setenv("IMG2IMG_DEFAULT_PROMPTS", '["red, green and blue", "night"]')
    settings = load_settings(WorkerSettings)
    assert settings.allowed_models == ["tiny", "org/model"]
    assert settings.default_prompts == ["red, green and blue", "night"]


def test_common_settings_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2IMG_DEFAULT_PROMPTS", '["x, y"]')
    monkeypatch.setenv("IMG2IMG_QUEUE_URL", "http://localhost/q")
    settings = load_settings(CommonSettings)
    assert settings.default_prompts == ["x, y"]
    assert settings.queue_url == "http://localhost/q"


def test_allowed_inputs_accepts_s3_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2IMG_ALLOWED_INPUTS", "s3://in-bucket/photos/,s3://other/")
    assert load_settings(WorkerSettings).allowed_inputs == ["s3://in-bucket/photos/",
                                                            "s3://other/"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IMG2IMG_MAX_BATCH_SIZE", "0"),
        ("IMG2IMG_MAX_BATCH_SIZE", "many"),
        ("IMG2IMG_MEMORY_MODE", "turbo"),
        ("IMG2IMG_ALLOWED_INPUTS", "bucket-without-scheme"),
        ("IMG2IMG_ALLOWED_OUTPUTS", "s3://ok/,nope"),
        ("IMG2IMG_ALLOWED_MODELS", '["unterminated",'),
        ("IMG2IMG_DTYPE", "float8"),
        ("IMG2IMG_SIZE_BUCKET", "12"),
        ("IMG2IMG_MAX_CACHED_MODELS", "0"),
        ("IMG2IMG_VISIBILITY_TIMEOUT", "5"),
        ("IMG2IMG_RECEIVE_WAIT_SECONDS", "21"),
        ("IMG2IMG_IO_THREADS", "0"),
        ("IMG2IMG_EVENT_OUTPUT_FORMAT", "gif"),
    ],
)
def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str,
                                          value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings(WorkerSettings)
    message = str(info.value)
    assert f"{variable}:" in message, message
    assert value in message or repr(value) in message
    assert isinstance(info.value, InvalidJob) and is_permanent(info.value)


def test_several_invalid_values_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2IMG_MAX_BATCH_SIZE", "0")
    monkeypatch.setenv("IMG2IMG_MEMORY_MODE", "turbo")
    with pytest.raises(SettingsError) as info:
        load_settings(WorkerSettings)
    assert "IMG2IMG_MAX_BATCH_SIZE" in str(info.value)
    assert "IMG2IMG_MEMORY_MODE" in str(info.value)


def test_overrides_are_validated_too() -> None:
    with pytest.raises(SettingsError, match="IMG2IMG_MAX_BATCH_SIZE"):
        load_settings(WorkerSettings, max_batch_size=0)
    assert load_settings(WorkerSettings, max_batch_size=3).max_batch_size == 3


def test_invalid_event_steps_names_the_event_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2IMG_EVENT_STEPS", "500")
    with pytest.raises(SettingsError) as info:
        load_settings(WorkerSettings)
    assert "IMG2IMG_EVENT_STEPS" in str(info.value), str(info.value)


def test_event_steps_times_strength_names_the_event_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2IMG_EVENT_STEPS", "1")
    with pytest.raises(SettingsError) as info:
        load_settings(WorkerSettings)
    message = str(info.value)
    assert "IMG2IMG_EVENT_STEPS" in message or "IMG2IMG_EVENT_STRENGTH" in message, message


def test_dotenv_file_is_read(clean_env: Path) -> None:
    (clean_env / ".env").write_text(
        "IMG2IMG_MAX_BATCH_SIZE=3\n"
        "IMG2IMG_DEFAULT_PROMPTS=from dotenv,second\n"
        "IMG2IMG_ALLOWED_MODELS=[\"tiny\"]\n"
        "SOMETHING_ELSE=ignored\n")
    settings = load_settings(WorkerSettings)
    assert settings.max_batch_size == 3
    assert settings.default_prompts == ["from dotenv", "second"]
    assert settings.allowed_models == ["tiny"]


def test_environment_wins_over_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / ".env").write_text("IMG2IMG_MAX_BATCH_SIZE=3\n")
    monkeypatch.setenv("IMG2IMG_MAX_BATCH_SIZE", "5")
    assert load_settings(WorkerSettings).max_batch_size == 5


def test_invalid_dotenv_value_names_the_variable(clean_env: Path) -> None:
    (clean_env / ".env").write_text("IMG2IMG_MEMORY_MODE=turbo\n")
    with pytest.raises(SettingsError, match=r"IMG2IMG_MEMORY_MODE: .*turbo"):
        load_settings(WorkerSettings)


def test_model_cache_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMG2IMG_MODEL_CACHE", str(tmp_path / "cache"))
    assert load_settings(WorkerSettings).model_cache == tmp_path / "cache"


def test_heartbeat_interval_is_a_third_of_visibility(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG2IMG_VISIBILITY_TIMEOUT", "90")
    assert load_settings(WorkerSettings).heartbeat_interval == 30
