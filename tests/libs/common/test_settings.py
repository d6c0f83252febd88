"""Settings come from the environment: ``FLEETLAB_`` prefix, ``__`` between nested groups."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleetlab_common.settings import CommonSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No FLEETLAB_ variable from the outer environment leaks into a test; no .env is read."""
    for name in list(os.environ):
        if name.upper().startswith("FLEETLAB_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_embedded_setup() -> None:
    s = CommonSettings()
    assert s.home == Path(".fleetlab")
    assert s.host == "127.0.0.1"
    assert s.log_level == "INFO"
    assert s.log_json is None
    assert s.nats.url == "nats://127.0.0.1:4222"
    assert s.nats.duplicate_window_s > 0
    assert s.nats.max_deliver > 0
    assert s.postgres.dsn.startswith("postgresql://")
    assert s.artifacts.backend == "local"
    assert s.artifacts.s3.endpoint == ""
    assert s.artifacts.s3.secret_key.get_secret_value() == ""
    assert s.telemetry.otlp_endpoint == ""


def test_nested_values_come_from_double_underscore_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLEETLAB_NATS__URL", "nats://nats.example:4333")
    monkeypatch.setenv("FLEETLAB_NATS__DUPLICATE_WINDOW_S", "30")
    monkeypatch.setenv("FLEETLAB_POSTGRES__DSN", "postgresql://u@db.example/fleet")
    monkeypatch.setenv("FLEETLAB_POSTGRES__MAX_SIZE", "3")
    monkeypatch.setenv("FLEETLAB_ARTIFACTS__BACKEND", "s3")
    monkeypatch.setenv("FLEETLAB_ARTIFACTS__S3__ENDPOINT", "minio.example:9000")
    monkeypatch.setenv("FLEETLAB_ARTIFACTS__S3__SECRET_KEY", "hunter2")
    monkeypatch.setenv("FLEETLAB_ARTIFACTS__S3__SECURE", "true")

    s = CommonSettings()

    assert s.nats.url == "nats://nats.example:4333"
    assert s.nats.duplicate_window_s == 30.0
    assert s.postgres.dsn == "postgresql://u@db.example/fleet"
    assert s.postgres.max_size == 3
    # A nested variable changes only its own field: the rest of the group keeps its default.
    assert s.postgres.min_size == 1
    assert s.artifacts.backend == "s3"
    assert s.artifacts.s3.endpoint == "minio.example:9000"
    assert s.artifacts.s3.secure is True
    assert s.artifacts.s3.bucket == "fleetlab"
    assert s.artifacts.s3.secret_key.get_secret_value() == "hunter2"
    # A secret never shows up in a repr or a log line.
    assert "hunter2" not in repr(s)


def test_top_level_values_and_the_log_level_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETLAB_PORT", "8081")
    monkeypatch.setenv("FLEETLAB_LOG_LEVEL", "debug")
    monkeypatch.setenv("FLEETLAB_LOG_JSON", "false")
    s = CommonSettings()
    assert s.port == 8081
    assert s.log_level == "DEBUG"
    assert s.log_json is False


def test_variables_without_the_prefix_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS__URL", "nats://wrong:1")
    monkeypatch.setenv("PORT", "9999")
    s = CommonSettings()
    assert s.nats.url == "nats://127.0.0.1:4222"
    assert s.port == 0


def test_a_bad_value_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETLAB_ARTIFACTS__BACKEND", "ftp")
    with pytest.raises(ValidationError, match="backend"):
        CommonSettings()


def test_artifact_root_is_taken_from_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "fl-home"
    monkeypatch.setenv("FLEETLAB_HOME", str(home))
    assert CommonSettings().artifact_root() == home / "artifacts"

    monkeypatch.setenv("FLEETLAB_ARTIFACTS__ROOT", "store/blobs")
    assert CommonSettings().artifact_root() == home / "store" / "blobs"


def test_artifact_root_is_absolute_even_with_a_relative_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The fixture made tmp_path the working directory.
    root = CommonSettings().artifact_root()
    assert root.is_absolute()
    assert root == tmp_path / ".fleetlab" / "artifacts"


def test_an_absolute_artifact_root_ignores_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLEETLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FLEETLAB_ARTIFACTS__ROOT", str(tmp_path / "elsewhere"))
    assert CommonSettings().artifact_root() == tmp_path / "elsewhere"


def test_a_service_extends_the_common_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    class AgentSettings(CommonSettings):
        slots: int = 1

    monkeypatch.setenv("FLEETLAB_SLOTS", "4")
    monkeypatch.setenv("FLEETLAB_NATS__URL", "nats://n:1")
    s = AgentSettings()
    assert s.slots == 4
    assert s.nats.url == "nats://n:1"
