"""``askonce consumers add`` gives a working client id and secret; ``askonce openapi``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from askonce.cli import app
from askonce.runtime import build_runtime
from askonce.settings import Settings
from store import upgrade

runner = CliRunner()


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated SQLite file the CLI uses (through ASKONCE_DATABASE_URL)."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(url)
    monkeypatch.setenv("ASKONCE_DATABASE_URL", url)
    return url


def test_consumers_add_prints_credentials_that_get_a_token(cli_db: str) -> None:
    url = cli_db
    added = runner.invoke(
        app,
        ["consumers", "add", "crm-main", "--kind", "crm", "--scopes", "system/Patient.rs"],
    )
    assert added.exit_code == 0, added.output
    client_id = re.search(r"client_id=(\S+)", added.output)
    secret = re.search(r"client_secret=(\S+)", added.output)
    assert client_id and secret
    listed = runner.invoke(app, ["consumers", "list"])
    assert "crm-main" in listed.output and secret.group(1) not in listed.output
    again = runner.invoke(app, ["consumers", "add", "crm-main", "--kind", "crm"])
    assert again.exit_code == 2 and "already exists" in again.output
    bad = runner.invoke(app, ["consumers", "add", "x", "--kind", "crm", "--scopes", "everything"])
    assert bad.exit_code == 2
    client = TestClient(build_runtime(Settings(database_url=url)).create_app())
    token = client.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id.group(1), secret.group(1)),
    )
    assert token.status_code == 200 and token.json()["scope"] == "system/Patient.rs"


def test_openapi_command_writes_the_committed_document(tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    assert runner.invoke(app, ["openapi", "--out", str(out)]).exit_code == 0
    committed = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
    assert out.read_text() == committed.read_text()


def test_consumers_webhook_gives_rotates_and_ends_it(cli_db: str) -> None:
    added = runner.invoke(
        app,
        [
            "consumers",
            "add",
            "sms",
            "--kind",
            "messaging",
            "--webhook-url",
            "https://sms.example.org/askonce",
        ],
    )
    assert added.exit_code == 0, added.output
    first = re.search(r"webhook_secret=(whsec_\S+)", added.output)
    assert first is not None
    rotated = runner.invoke(app, ["consumers", "webhook", "sms", "--rotate-secret"])
    assert rotated.exit_code == 0, rotated.output
    second = re.search(r"webhook_secret=(whsec_\S+)", rotated.output)
    assert second is not None and second.group(1) != first.group(1)
    assert "webhook_url=https://sms.example.org/askonce" in rotated.output
    bad = runner.invoke(app, ["consumers", "webhook", "sms", "--url", "http://sms.example.org/x"])
    assert bad.exit_code == 2 and "https" in bad.output
    both = runner.invoke(app, ["consumers", "webhook", "sms", "--off", "--url", "https://x.org/"])
    assert both.exit_code == 2
    assert runner.invoke(app, ["consumers", "webhook", "nobody", "--off"]).exit_code == 2
    ended = runner.invoke(app, ["consumers", "webhook", "sms", "--off"])
    assert ended.exit_code == 0 and "webhook_url=\n" in ended.output
    again = runner.invoke(app, ["consumers", "webhook", "sms", "--rotate-secret"])
    assert again.exit_code == 2 and "has no webhook" in again.output
