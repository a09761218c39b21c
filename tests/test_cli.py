from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from askonce.cli import app

runner = CliRunner()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("db", "serve", "worker", "beat", "demo"):
        assert command in result.output


def test_db_upgrade_then_current(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ASKONCE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["db", "current"])
    assert result.exit_code == 0
    current, head = result.output.split("current:")[1].split("head:")
    assert current.strip() == head.strip()


def test_serve_refuses_a_stale_schema_and_names_the_command(tmp_path: Path) -> None:
    env = {**os.environ, "ASKONCE_DATABASE_URL": f"sqlite:///{tmp_path / 'stale.db'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "askonce", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "askonce db upgrade" in proc.stderr


def test_serve_refuses_a_placeholder_secret_outside_the_demo(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ASKONCE_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "ASKONCE_SECRET_KEY": "change-me",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "askonce", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "ASKONCE_SECRET_KEY" in proc.stderr


def test_demo_credentials_are_usable_and_rotate(sqlite_url: str) -> None:
    from askonce.demo import demo_credentials
    from askonce.runtime import build_runtime
    from askonce.settings import Settings
    from gateway.auth.consumers import authenticate_client

    runtime = build_runtime(Settings(database_url=sqlite_url))
    first = demo_credentials(runtime)
    second = demo_credentials(runtime)
    assert first.client_id == second.client_id
    assert "askonce.admin" in second.scopes
    with runtime.session_factory() as session:
        assert authenticate_client(session, second.client_id, second.client_secret) is not None
        assert authenticate_client(session, first.client_id, first.client_secret) is None
