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


def test_serve_with_several_worker_processes(sqlite_url: str, tmp_path: Path) -> None:
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "ASKONCE_DATABASE_URL": sqlite_url}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "askonce", "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.3)
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert (tmp_path / "serve.log").read_text().count("Started server process") == 2
