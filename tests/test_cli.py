from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from askonce.cli import app
from askonce.settings import get_settings
from store import make_engine, make_session_factory
from store.models import Outbox, Source, SyncRun
from store.types import utcnow
from tests.sekmet_server import free_port
from tests.sync.helpers import patient, write_ndjson

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


def test_deliver_then_prune_print_what_they_did(tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("ASKONCE_DATABASE_URL", url)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        source = Source(name="ehr", kind="ndjson", base_url="/nonexistent")
        session.add(source)
        session.flush()
        long_ago = utcnow() - timedelta(days=200)
        session.add_all(
            [
                SyncRun(source_id=source.id, status="ok", started_at=long_ago),
                SyncRun(source_id=source.id, status="ok", started_at=long_ago),  # latest: kept
                Outbox(
                    event_type="patient.created",
                    aggregate_type="Patient",
                    aggregate_id="g1",
                    payload={},
                    created_at=long_ago,
                ),
            ]
        )
        session.commit()

    delivered = runner.invoke(app, ["deliver"])
    assert delivered.exit_code == 0, delivered.output
    assert "events handed out 1, notifications 0" in delivered.output

    pruned = runner.invoke(app, ["prune", "--outbox-days", "7"])
    assert pruned.exit_code == 0, pruned.output
    assert "change events deleted 1 (queue rows 0), sync runs deleted 1" in pruned.output
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Outbox)) == 0
        assert conn.scalar(select(func.count()).select_from(SyncRun)) == 1
    engine.dispose()


def _askonce(database_url: str, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ASKONCE_DATABASE_URL": database_url,
        "ASKONCE_LOG_LEVEL": "WARNING",
        **settings,
    }
    return subprocess.run(
        [sys.executable, "-m", "askonce", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", [["sources", "list"], ["db", "current"], ["serve"]])
def test_a_database_that_cannot_be_reached_is_one_line_not_a_traceback(
    command: list[str], tmp_path: Path
) -> None:
    """Every command says the database is unavailable, why (the driver's words) and where
    it was looked for, password masked; no traceback."""
    url = f"postgresql+psycopg://askonce:s3cret@127.0.0.1:{free_port()}/askonce"
    refused = _askonce(url, *command)
    assert refused.returncode == 1, refused.stderr
    assert "Traceback" not in refused.stderr and "s3cret" not in refused.stderr
    assert "error: the database is unavailable (connection to server at" in refused.stderr
    assert "Connection refused); ASKONCE_DATABASE_URL is" in refused.stderr
    assert "postgresql+psycopg://askonce:***@127.0.0.1" in refused.stderr
    unopenable = _askonce(f"sqlite:///{tmp_path / 'no-such-folder' / 'x.db'}", *command)
    assert unopenable.returncode == 1, unopenable.stderr
    assert "Traceback" not in unopenable.stderr
    assert "the database is unavailable (unable to open database file)" in unopenable.stderr


def test_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``askonce check``: ok on a database at head; not ok (exit 1) when it cannot be
    reached; exit 2 naming the command that fixes a stale schema. ``--mllp`` with no
    hl7v2 source has nothing to check; a source named but not there is not ok."""
    url = f"sqlite:///{tmp_path / 'check.db'}"
    monkeypatch.setenv("ASKONCE_DATABASE_URL", url)
    stale = runner.invoke(app, ["check"])
    assert stale.exit_code == 2 and "askonce db upgrade" in stale.output
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    ok = runner.invoke(app, ["check"])
    assert ok.exit_code == 0 and ok.output.strip() == "ok"
    ports = runner.invoke(app, ["check", "--mllp"])
    assert ports.exit_code == 0, ports.output
    assert "no enabled hl7v2 source: no port to check" in ports.output
    named = runner.invoke(app, ["check", "--mllp", "--source", "adt"])
    assert named.exit_code == 1
    assert "no enabled hl7v2 source named adt" in named.output
    assert "not ok: 1 hl7v2 source(s) not listening" in named.output
    monkeypatch.setenv(
        "ASKONCE_DATABASE_URL", f"postgresql+psycopg://askonce@127.0.0.1:{free_port()}/askonce"
    )
    get_settings.cache_clear()
    down = runner.invoke(app, ["check"])
    assert down.exit_code == 1
    assert "not ok: the database is unavailable (connection to server at" in down.output


def test_a_broker_that_cannot_be_reached_is_one_line_and_starts_no_run(tmp_path: Path) -> None:
    """Services mode, Redis down: ``askonce sync`` says so before a run is started that no
    worker could be handed; ``askonce check`` is not ok, naming the broker."""
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    assert _askonce(url, "db", "upgrade").returncode == 0
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient("p1", "Fam")])
    added = _askonce(url, "sources", "add", "ehr", "--kind", "ndjson", "--url", str(folder))
    assert added.returncode == 0, added.stderr
    broker = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    for command, said in (
        (["sync", "ehr"], "error: the broker is unavailable (Error 111 connecting to"),
        (["check"], "not ok: the broker is unavailable (Error 111 connecting to"),
    ):
        refused = _askonce(url, *command, ASKONCE_REDIS_URL=broker)
        assert refused.returncode == 1, refused.stderr
        assert said in refused.stderr
        assert "Traceback" not in refused.stderr and "s3cret" not in refused.stderr
        if command[0] == "sync":
            assert "; ASKONCE_REDIS_URL is redis://:***@127.0.0.1:" in refused.stderr
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        assert session.scalar(select(func.count()).select_from(SyncRun)) == 0
    engine.dispose()


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_port_in_use_is_said_before_anything_is_done(command: str, tmp_path: Path) -> None:
    """``serve`` and ``demo`` on a port another server holds stop at once with one line;
    the demo before it syncs anything or rotates the credentials a running demo handed
    out."""
    url = f"sqlite:///{tmp_path / 'port.db'}"
    if command == "serve":
        assert _askonce(url, "db", "upgrade").returncode == 0
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        refused = _askonce(
            url,
            command,
            "--port",
            str(port),
            ASKONCE_SECRET_KEY="k" * 32,
            ASKONCE_HOST="127.0.0.1",
        )
    assert refused.returncode == 1, refused.stderr
    assert (
        f"error: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another askonce serve or demo?); free it, or use --port"
    ) in refused.stderr
    assert "database ready" not in refused.stderr
    assert (tmp_path / "port.db").exists() == (command == "serve")


def test_a_setting_that_is_not_valid_is_named_not_quoted(tmp_path: Path) -> None:
    """Every refused setting is one line naming its variable and what is wrong, never its
    value (a secret, say); exit 2, no traceback."""
    refused = _askonce(
        f"sqlite:///{tmp_path / 'x.db'}",
        "check",
        ASKONCE_PORT="not-a-port-4711",
        ASKONCE_LOG_LEVEL="LOUD",
    )
    assert refused.returncode == 2, refused.stderr
    assert "error: ASKONCE_PORT: Input should be a valid integer" in refused.stderr
    assert "error: ASKONCE_LOG_LEVEL: Input should be 'DEBUG'" in refused.stderr
    assert "not-a-port-4711" not in refused.stderr and "LOUD" not in refused.stderr
    assert "Traceback" not in refused.stderr
