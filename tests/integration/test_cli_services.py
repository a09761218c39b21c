"""``askonce sync NAME`` in services mode: the run goes to a real worker and is followed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from askonce.cli import app
from askonce.runtime import Runtime
from tests.integration.conftest import Worker
from tests.sync.helpers import encounter, patient, write_ndjson

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_sync_in_services_mode_runs_on_the_worker(
    services: Runtime,
    worker: Worker,
    pg_sessions: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient(f"p{n}", f"Fam{n}") for n in range(6)])
    write_ndjson(folder, "Encounter", [encounter("e1", "p1")])
    monkeypatch.setenv("ASKONCE_DATABASE_URL", services.settings.database_url)
    monkeypatch.setenv("ASKONCE_REDIS_URL", services.settings.redis_url or "")
    monkeypatch.setenv("ASKONCE_TASK_QUEUE", services.settings.task_queue)
    monkeypatch.setenv("ASKONCE_LOG_LEVEL", "WARNING")
    runner = CliRunner()
    added = runner.invoke(
        app,
        [
            "sources",
            "add",
            "ehr",
            "--kind",
            "ndjson",
            "--url",
            str(folder),
            "--option",
            "page_size=2",
        ],
    )
    assert added.exit_code == 0, added.output
    result = runner.invoke(app, ["sync", "ehr"])
    assert result.exit_code == 0, result.output
    assert "ehr: ok" in result.output
    assert "resources 7" in result.output
