"""The sources CLI contract: sources add/list/status, sync NAME [--full], and the demo sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy.exc import OperationalError
from typer.testing import CliRunner

from askonce import cli_sources
from askonce.cli import app
from askonce.demo import DEMO_SOURCES, run_demo_sync
from askonce.runtime import build_runtime
from askonce.settings import Settings
from store import SourceRepository
from sync import DatabaseUnavailableError, catchup
from tests.sekmet_server import SekmetServer
from tests.sync.helpers import encounter, patient, write_ndjson
from tests.sync.test_database_failures import locked_sqlite_error

runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "ehr"
    write_ndjson(
        target, "Patient", [patient("p1"), patient("p2", "Lee"), patient("bad", birth="x")]
    )
    write_ndjson(target, "Encounter", [encounter("e1", "p1")])
    return target


def test_add_sync_status_list(cli_db: str, folder: Path) -> None:
    added = runner.invoke(
        app,
        ["sources", "add", "ehr-x", "--kind", "ndjson", "--url", str(folder), "--schedule", "15m"],
    )
    assert added.exit_code == 0, added.output
    synced = runner.invoke(app, ["sync", "ehr-x"])
    assert synced.exit_code == 0, synced.output
    assert "ehr-x: ok" in synced.output
    assert "resources 4" in synced.output and "quarantined 1" in synced.output
    status = runner.invoke(app, ["sources", "status", "ehr-x"])
    assert status.exit_code == 0
    assert "last run: ok" in status.output
    assert "Patient/bad" in status.output and "birthDate" in status.output
    assert "active 3" in status.output and "quarantined 1" in status.output
    listed = runner.invoke(app, ["sources", "list"])
    assert "ehr-x" in listed.output and "15m" in listed.output
    again = runner.invoke(app, ["sync", "ehr-x", "--full"])
    assert again.exit_code == 0
    assert "unchanged 4" in again.output


def test_status_shows_an_owed_catch_up(cli_db: str, folder: Path) -> None:
    runner.invoke(app, ["sources", "add", "ehr-x", "--kind", "ndjson", "--url", str(folder)])
    runtime = build_runtime(Settings(database_url=cli_db))
    with runtime.session_factory() as session:
        source_id = SourceRepository(session).get_by_name("ehr-x").id
        catchup.owe(session, source_id)
        session.commit()
    status = runner.invoke(app, ["sources", "status", "ehr-x"])
    assert "catch-up owed since" in status.output
    assert runner.invoke(app, ["sync", "ehr-x"]).exit_code == 0
    assert "catch-up owed" not in runner.invoke(app, ["sources", "status", "ehr-x"]).output


def test_bad_input_is_refused_with_a_reason(cli_db: str, folder: Path) -> None:
    wrong_kind = runner.invoke(app, ["sources", "add", "x", "--kind", "ftp", "--url", "u"])
    assert wrong_kind.exit_code == 2 and "kind must be one of" in wrong_kind.output
    bad_schedule = runner.invoke(
        app, ["sources", "add", "x", "--kind", "fhir", "--url", "http://e", "--schedule", "soon"]
    )
    assert bad_schedule.exit_code == 2 and "schedule" in bad_schedule.output
    bad_option = runner.invoke(
        app, ["sources", "add", "x", "--kind", "fhir", "--url", "http://e", "--option", "nope=1"]
    )
    assert bad_option.exit_code == 2 and "nope" in bad_option.output
    bad_auth = runner.invoke(
        app, ["sources", "add", "x", "--kind", "fhir", "--url", "http://e", "--auth", "magic"]
    )
    assert bad_auth.exit_code == 2 and "bearer:TOKEN" in bad_auth.output
    runner.invoke(app, ["sources", "add", "dup", "--kind", "ndjson", "--url", str(folder)])
    dup = runner.invoke(app, ["sources", "add", "dup", "--kind", "ndjson", "--url", str(folder)])
    assert dup.exit_code == 2 and "already exists" in dup.output
    assert runner.invoke(app, ["sync", "missing"]).exit_code == 2


def test_a_failing_source_exits_non_zero(cli_db: str, tmp_path: Path) -> None:
    runner.invoke(
        app, ["sources", "add", "gone", "--kind", "ndjson", "--url", str(tmp_path / "no")]
    )
    result = runner.invoke(app, ["sync", "gone"])
    assert result.exit_code == 1
    assert "gone: failed" in result.output


def test_a_database_failure_exits_non_zero_and_says_the_run_resumes(
    cli_db: str, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner.invoke(app, ["sources", "add", "ehr-x", "--kind", "ndjson", "--url", str(folder)])
    locked = locked_sqlite_error(cli_db.removeprefix("sqlite:///"))

    def database_locked(*_args: Any, **_kwargs: Any) -> None:
        raise DatabaseUnavailableError("the database failed") from OperationalError(
            "INSERT", {}, locked
        )

    monkeypatch.setattr(cli_sources, "run_source", database_locked)
    result = runner.invoke(app, ["sync", "ehr-x"])
    assert result.exit_code == 1
    assert "ehr-x: database unavailable (OperationalError)" in result.output
    assert "resumes from the last committed page" in result.output


def test_check_says_what_a_sync_would_meet(cli_db: str, folder: Path, tmp_path: Path) -> None:
    runner.invoke(app, ["sources", "add", "ehr-x", "--kind", "ndjson", "--url", str(folder)])
    checked = runner.invoke(app, ["sources", "check", "ehr-x"])
    assert checked.exit_code == 0, checked.output
    assert "Patient" in checked.output and "1 file," in checked.output
    for secret in ("Okafor", "1980-04-02"):  # files are measured, never printed
        assert secret not in checked.output
    gone = tmp_path / "gone"
    runner.invoke(app, ["sources", "add", "gone", "--kind", "ndjson", "--url", str(gone)])
    failed = runner.invoke(app, ["sources", "check", "gone"])
    assert failed.exit_code == 1
    assert "does not exist" in failed.output and "a sync would fail" in failed.output
    runner.invoke(
        app, ["sources", "add", "adt", "--kind", "hl7v2", "--url", "mllp://127.0.0.1:2575"]
    )
    pushed = runner.invoke(app, ["sources", "check", "adt"])
    assert pushed.exit_code == 0 and "nothing is pulled" in pushed.output
    assert runner.invoke(app, ["sources", "check", "nobody"]).exit_code == 2


@pytest.mark.sekmet
def test_check_a_real_fhir_server(cli_db: str, sekmet_server: SekmetServer) -> None:
    url = sekmet_server.base_url
    runner.invoke(app, ["sources", "add", "real", "--kind", "fhir", "--url", url])
    checked = runner.invoke(app, ["sources", "check", "real"])
    assert checked.exit_code == 0, checked.output
    assert "4.0.1" in checked.output and "searchable by _lastUpdated" in checked.output
    # What `sources subscribe` can ask of it: sekmet lists its Backport topics.
    assert "Subscriptions Backport topic(s)" in checked.output
    assert "http://sekmet.dev/fhir/SubscriptionTopic/patient-change" in checked.output


def test_the_demo_syncs_three_ehrs_into_golden_records(cli_db: str) -> None:
    runtime = build_runtime(Settings(database_url=cli_db))
    counts = run_demo_sync(runtime, Console(quiet=True))
    assert counts["source_records"] > 2000  # ~740 Patients and ~1470 Encounters
    assert counts["quarantined"] == 2  # the two planted broken resources
    # Duplicates across the EHRs collapse: far fewer golden records than Patient records.
    assert 0 < counts["golden_records"] < 700
    again = run_demo_sync(runtime, Console(quiet=True))
    assert again == counts
    assert len(DEMO_SOURCES) == 3
