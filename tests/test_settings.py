from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from askonce.settings import (
    DEFAULT_DATABASE_URL,
    DEMO_SECRET,
    MIN_SECRET_BYTES,
    PLACEHOLDER_SECRETS,
    PlaceholderSecretError,
    Settings,
)


def test_defaults_are_embedded_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASKONCE_SECRET_KEY")
    settings = Settings()
    assert settings.database_url == DEFAULT_DATABASE_URL == "sqlite:///./askonce.db"
    assert settings.redis_url is None and settings.embedded
    assert settings.log_level == "INFO"


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASKONCE_DATABASE_URL", "postgresql+psycopg://u@db/askonce")
    monkeypatch.setenv("ASKONCE_REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setenv("ASKONCE_LOG_LEVEL", "DEBUG")
    settings = Settings()
    assert settings.is_postgres and not settings.embedded and settings.log_level == "DEBUG"


def test_empty_redis_url_means_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASKONCE_REDIS_URL", "")
    assert Settings().embedded


def test_secret_is_hidden_and_placeholders_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASKONCE_SECRET_KEY", "change-me")
    settings = Settings()
    assert "change-me" not in repr(settings)
    with pytest.raises(PlaceholderSecretError):
        settings.require_real_secrets()
    settings.model_copy(update={"demo": True}).require_real_secrets()
    monkeypatch.setenv("ASKONCE_SECRET_KEY", "a-real-secret-of-some-length")
    with pytest.raises(PlaceholderSecretError, match="32 bytes"):
        Settings().require_real_secrets()  # 28 bytes: too short a key for HS256
    monkeypatch.setenv("ASKONCE_SECRET_KEY", "a-real-secret-of-a-proper-length")
    Settings().require_real_secrets()


def test_the_demo_secret_is_long_enough_for_hs256() -> None:
    assert len(DEMO_SECRET.encode()) >= MIN_SECRET_BYTES
    assert DEMO_SECRET in PLACEHOLDER_SECRETS


def test_invalid_log_level_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASKONCE_LOG_LEVEL", "LOUD")
    with pytest.raises(ValueError, match="log_level"):
        Settings()


def test_the_readme_names_every_setting_and_the_settings_describe_themselves() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for name, field in Settings.model_fields.items():
        assert f"ASKONCE_{name.upper()}" in readme, name
        assert field.description, name


def test_retention_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert (settings.outbox_retention_days, settings.run_retention_days) == (30, 90)
    assert settings.prune_interval_s == 3600
    monkeypatch.setenv("ASKONCE_OUTBOX_RETENTION_DAYS", "0")
    assert Settings().outbox_retention_days == 0  # kept for ever
    monkeypatch.setenv("ASKONCE_OUTBOX_RETENTION_DAYS", "-1")
    with pytest.raises(ValidationError):
        Settings()
