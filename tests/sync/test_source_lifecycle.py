"""A source after it was added: changing it, pausing it, removing it (sync.sources,
sync.retire, ``askonce sources update|disable|enable|remove``)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

import sync.retire
from askonce.cli import app
from askonce.runtime import build_runtime
from askonce.settings import Settings
from connectors import Page
from store import CursorRepository, SyncRunRepository
from store.models import Encounter, GoldenPatient, Link, Outbox, SourceRecord, SyncRun
from store.models import Source as SourceRow
from store.types import utcnow
from sync import (
    SourceChange,
    SourceRemovingError,
    SourceSettingsError,
    SourceUnavailableError,
    begin_removal,
    ingest_page,
    refresh_goldens,
    removal_plan,
    remove_source,
    start_or_resume,
    update_source,
)
from sync.pipeline import UnknownSourceError
from sync.retire import REMOVAL_STATE_KEY, stalled_removals
from sync.runner import INTAKE_TOKEN_KEY
from sync.tasks import schedule_due
from tests.sync.helpers import add_source, encounter, events, patient, records, write_ndjson

SSN = "http://hl7.org/fhir/sid/us-ssn"


def person(rid: str, *, line: str = "12 Harbor Way", **extra: Any) -> dict[str, Any]:
    """One real person, as each EHR registers her (SSN, phone, name, birth date agree)."""
    return patient(
        rid,
        "Whitfield",
        "Rosalind",
        "1961-07-19",
        telecom=[{"system": "phone", "value": "(415) 555-0188"}],
        identifier=[{"system": SSN, "value": "123-45-6789"}],
        address=[{"line": [line], "city": "Oakland", "postalCode": "94607"}],
        **extra,
    )


def two_sources(session_factory: sessionmaker[Session]) -> tuple[int, int]:
    """Source a holds Rosalind (with an encounter) and Jonah (a's alone, with an
    encounter); source b holds Rosalind too, with an encounter of its own."""
    a = add_source(session_factory, "a", trust_rank=90)
    b = add_source(session_factory, "b", trust_rank=10)
    jonah = patient("j1", "Abernathy", "Jonah", "1990-02-11")
    with session_factory() as session:
        ingest_page(session, a, Page("Patient", [person("r1"), jonah], "p"))
        ingest_page(
            session, a, Page("Encounter", [encounter("ea", "r1"), encounter("ej", "j1")], "e")
        )
        ingest_page(session, b, Page("Patient", [person("r9", line="9 Elm St")], "p"))
        ingest_page(session, b, Page("Encounter", [encounter("eb", "r9")], "e"))
        session.commit()
    return a, b


def golden_of(session: Session, source_id: int, resource_id: str) -> GoldenPatient:
    record = session.scalars(
        select(SourceRecord).where(
            SourceRecord.source_id == source_id, SourceRecord.resource_id == resource_id
        )
    ).one()
    golden_id = session.scalar(select(Link.golden_id).where(Link.source_record_id == record.id))
    golden = session.get(GoldenPatient, golden_id)
    assert golden is not None
    return golden


def lines(golden: GoldenPatient) -> list[str]:
    return [address["line"][0] for address in golden.resource["address"]]


def test_removing_a_source_takes_it_out_of_the_golden_records_then_erases_it(
    session_factory: sessionmaker[Session],
) -> None:
    a, b = two_sources(session_factory)
    with session_factory() as session:
        rosalind, jonah = golden_of(session, a, "r1"), golden_of(session, a, "j1")
        assert golden_of(session, b, "r9").id == rosalind.id
        assert lines(rosalind) == ["12 Harbor Way", "9 Elm St"]
        rosalind_id, jonah_id, version = rosalind.id, jonah.id, rosalind.version
        plan = removal_plan(session, a)
        updated, deleted_encounters = (
            events(session, "patient.updated"),
            events(session, "encounter.deleted"),
        )
    assert plan.records == {"Patient": 2, "Encounter": 2}
    assert plan.golden_records == 2

    seen: list[dict[str, int]] = []
    result = remove_source(
        session_factory, a, batch=1, on_batch=lambda r: seen.append(dict(r.deleted))
    )

    assert result.removed and result.deleted == {"Encounter": 2, "Patient": 2}
    assert result.erased == 4
    assert seen[0] == {"Encounter": 1}  # Encounters leave first, one transaction each
    with session_factory() as session:
        assert session.get(SourceRow, a) is None
        assert (
            session.scalar(
                select(func.count()).select_from(SourceRecord).where(SourceRecord.source_id == a)
            )
            == 0
        )
        # Rosalind keeps what b knows of her, in a new version; Jonah was a's alone.
        rosalind = session.get(GoldenPatient, rosalind_id)
        jonah = session.get(GoldenPatient, jonah_id)
        assert rosalind is not None and jonah is not None
        assert (rosalind.status, jonah.status) == ("active", "deleted")
        assert rosalind.version > version and lines(rosalind) == ["9 Elm St"]
        assert session.scalars(select(Link.golden_id)).all() == [rosalind_id]
        # b's encounter stays with her; a's left with an event each.
        assert [(e.source_id, e.golden_id) for e in session.scalars(select(Encounter))] == [
            (b, rosalind_id)
        ]
        assert events(session, "encounter.deleted") == deleted_encounters + 2
        assert events(session, "patient.updated") >= updated + 2
        assert (
            session.scalar(select(func.count()).select_from(SyncRun).where(SyncRun.source_id == a))
            == 0
        )
        # The other source goes on syncing, and the name can be taken again.
        again = ingest_page(session, b, Page("Patient", [person("r9", line="10 Elm St")], "p2"))
        session.commit()
    assert again.stored == 1
    assert add_source(session_factory, "a") != a
    with pytest.raises(UnknownSourceError):
        remove_source(session_factory, a)


def test_an_interrupted_removal_is_finished_by_running_it_again(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = two_sources(session_factory)
    real = sync.retire.apply_deletions
    calls = 0

    def fails_on_the_third(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("worker killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(sync.retire, "apply_deletions", fails_on_the_third)
    with pytest.raises(RuntimeError):
        remove_source(session_factory, a, batch=1)
    with session_factory() as session:
        source = session.get(SourceRow, a)
        assert source is not None and not source.enabled  # nothing new is taken meanwhile
        assert len(records(session, a, status="deleted")) == 2  # both Encounters
        with pytest.raises(SourceUnavailableError):
            start_or_resume(session, a)
        # Half removed: nothing enables it (or changes it) until the removal is finished.
        since = source.removing_since
        assert since is not None
        for change in (SourceChange(enabled=True), SourceChange(trust_rank=1)):
            with pytest.raises(SourceRemovingError, match="run the removal again"):
                update_source(session, a, change)
            session.rollback()
    monkeypatch.setattr(sync.retire, "apply_deletions", real)
    with session_factory() as session:  # a second start keeps the first's time
        assert begin_removal(session, a).removing_since == since
        session.rollback()
    result = remove_source(session_factory, a, batch=1)
    assert result.deleted == {"Patient": 2} and result.erased == 4
    with session_factory() as session:
        assert session.get(SourceRow, a) is None
        assert events(session, "encounter.deleted") == 2  # once each, not again
        assert len(records(session, b, status="active")) == 2


def test_a_removal_that_stopped_is_finished_by_the_schedulers_tick(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal run after an API answer (embedded) or by a worker that gave up its
    retries fails, and nobody asks again: once its heartbeat is older than the stall
    window, beat's tick (a Celery task) or the embedded scheduler's finishes it."""
    runtime = build_runtime(
        Settings(database_url=db_url, secret_key="s" * 40, sync_stall_after_s=300)
    )
    factory = runtime.session_factory
    a, b = two_sources(factory)
    real = sync.retire.apply_deletions

    def fails(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("the database failed")

    monkeypatch.setattr(sync.retire, "apply_deletions", fails)
    with pytest.raises(RuntimeError):
        remove_source(factory, a)
    with factory() as session:
        assert stalled_removals(session, stall_after_s=300) == []  # it may still be running
        later = utcnow() + timedelta(seconds=301)
        assert stalled_removals(session, stall_after_s=300, now=later) == [a]
    assert runtime.run_due() == []  # not yet stalled: left alone
    with factory() as session:
        assert session.get(SourceRow, a) is not None
    monkeypatch.setattr(sync.retire, "apply_deletions", real)

    def age(source_id: int) -> None:
        old = (utcnow() - timedelta(seconds=301)).isoformat()
        with factory() as session:
            state = json.dumps({"heartbeat": old})
            CursorRepository(session).set(source_id, REMOVAL_STATE_KEY, state)
            session.commit()

    age(a)
    assert schedule_due.delay().get(timeout=60) == []  # beat's tick sends the removal task
    with factory() as session:
        assert session.get(SourceRow, a) is None
        assert len(records(session, b, status="active")) == 2
    # The admin API began removing b, and its worker died before the first step.
    with factory() as session:
        begin_removal(session, b)
        session.commit()
    age(b)
    runtime.run_due()  # the embedded scheduler's tick
    with factory() as session:
        assert session.get(SourceRow, b) is None
        assert stalled_removals(session, stall_after_s=0) == []


def test_a_new_url_clears_the_cursors_and_stops_the_running_run(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    source_id = add_source(session_factory, "x", base_url=str(tmp_path / "old"))
    with session_factory() as session:
        CursorRepository(session).set(source_id, "Patient", "line-40")
        run, _token = start_or_resume(session, source_id)
        session.commit()
        run_id = run.id
    with session_factory() as session:
        update = update_source(session, source_id, SourceChange(url=str(tmp_path / "new")))
        session.commit()
    assert update.changed == ["base_url"]
    assert update.cursors_cleared and update.stopped_run == run_id
    assert not update.survivorship_changed
    with session_factory() as session:
        assert CursorRepository(session).get(source_id, "Patient") is None
        stopped = session.get(SyncRun, run_id)
        assert stopped is not None and stopped.status == "failed"
        assert stopped.detail["reason"] == "the source's URL changed"
        source = session.get(SourceRow, source_id)
        assert source is not None and source.base_url == str(tmp_path / "new")


def test_disabling_stops_the_run_and_refuses_new_ones_until_enabled(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory, "x")
    with session_factory() as session:
        run, _token = start_or_resume(session, source_id)
        session.commit()
    with session_factory() as session:
        update = update_source(session, source_id, SourceChange(enabled=False))
        session.commit()
    assert (update.changed, update.stopped_run) == (["enabled"], run.id)
    with session_factory() as session:
        with pytest.raises(SourceUnavailableError):
            start_or_resume(session, source_id)
        session.rollback()
        assert update_source(session, source_id, SourceChange(enabled=False)).changed == []
        assert update_source(session, source_id, SourceChange(enabled=True)).changed == ["enabled"]
        session.commit()
        start_or_resume(session, source_id)
        session.commit()
        assert SyncRunRepository(session).latest(source_id).status == "running"  # type: ignore[union-attr]


def test_settings_are_checked_as_when_the_source_was_added(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory, "x", schedule="1h", config={"page_size": 100})
    add_source(session_factory, "y")
    refused = {
        "schedule must be": SourceChange(schedule="every tuesday"),
        "already exists": SourceChange(name="y"),
        "not set": SourceChange(unset_options=("mrn_system",)),
        "page_size": SourceChange(options={"page_size": "many"}),
        "at least one": SourceChange(resource_types=[]),
    }
    for message, change in refused.items():
        with session_factory() as session, pytest.raises(SourceSettingsError, match=message):
            update_source(session, source_id, change)
    with session_factory() as session:
        change = SourceChange(
            schedule=None,
            options={"intake_token": "s3cret-token", "mrn_system": "urn:mrn"},
            unset_options=("page_size",),
            auth={"kind": "bearer", "token": "t"},
            name="x2",
        )
        update = update_source(session, source_id, change)
        session.commit()
        source = session.get(SourceRow, source_id)
        assert source is not None
    assert sorted(update.changed) == ["auth", "config", "name", "schedule"]
    assert (source.name, source.schedule, source.auth["kind"]) == ("x2", None, "bearer")
    assert set(source.config) == {INTAKE_TOKEN_KEY, "mrn_system"}  # the token's hash only
    assert "s3cret-token" not in str(source.config)
    with session_factory() as session:
        off = update_source(session, source_id, SourceChange(unset_options=("intake_token",)))
        session.commit()
        assert off.changed == ["config"]
        push = add_source(session_factory, "adt", kind="hl7v2", base_url="mllp://127.0.0.1:2575")
        with pytest.raises(SourceSettingsError, match="push-only"):
            update_source(session, push, SourceChange(schedule="1h"))


def test_a_new_trust_rank_renders_the_golden_records_again(
    session_factory: sessionmaker[Session],
) -> None:
    a, b = two_sources(session_factory)
    with session_factory() as session:
        before = golden_of(session, b, "r9")
        golden_id, version = before.id, before.version
        jonah_version = golden_of(session, a, "j1").version
        assert lines(before) == ["12 Harbor Way", "9 Elm St"]  # a ranks higher
        update = update_source(session, b, SourceChange(trust_rank=95))
        session.commit()
        updated = events(session, "patient.updated")
    assert update.survivorship_changed

    result = refresh_goldens(session_factory, b)

    assert (result.examined, result.rewritten) == (1, 1)  # b feeds Rosalind only
    with session_factory() as session:
        after = session.get(GoldenPatient, golden_id)
        assert after is not None
        assert lines(after) == ["9 Elm St", "12 Harbor Way"]
        assert after.version == version + 1
        assert golden_of(session, a, "j1").version == jonah_version
        assert events(session, "patient.updated") == updated + 1
        assert (
            session.scalar(
                select(Outbox.aggregate_id)
                .where(Outbox.event_type == "patient.updated")
                .order_by(Outbox.id.desc())
                .limit(1)
            )
            == golden_id
        )
    # Nothing changed since: a second pass writes no version and no event.
    again = refresh_goldens(session_factory, a)
    assert (again.examined, again.rewritten) == (2, 0)
    with session_factory() as session:
        assert events(session, "patient.updated") == updated + 1
        confirmed = update_source(session, a, SourceChange(options={"patient_confirmed": True}))
        assert confirmed.survivorship_changed


def test_the_cli_updates_pauses_and_removes_sources(cli_db: str, tmp_path: Path) -> None:
    for name, line in (("ehr-a", "12 Harbor Way"), ("ehr-b", "9 Elm St")):
        folder = tmp_path / name
        write_ndjson(folder, "Patient", [person(f"{name}-p", line=line)])
        write_ndjson(folder, "Encounter", [encounter(f"{name}-e", f"{name}-p")])
    runner = CliRunner()
    for name in ("ehr-a", "ehr-b"):
        add = ["sources", "add", name, "--kind", "ndjson", "--url", str(tmp_path / name)]
        assert runner.invoke(app, add).exit_code == 0
        assert runner.invoke(app, ["sync", name]).exit_code == 0

    paused = runner.invoke(app, ["sources", "disable", "ehr-a"])
    assert paused.exit_code == 0 and "changed enabled" in paused.output, paused.output
    listed = runner.invoke(app, ["sources", "list"])
    assert "no" in listed.output
    refused = runner.invoke(app, ["sync", "ehr-a"])
    assert refused.exit_code == 2 and "disabled" in refused.output
    assert runner.invoke(app, ["sources", "enable", "ehr-a"]).exit_code == 0
    assert runner.invoke(app, ["sync", "ehr-a"]).exit_code == 0

    ranked = runner.invoke(app, ["sources", "update", "ehr-b", "--trust-rank", "99"])
    assert ranked.exit_code == 0, ranked.output
    assert "1 rendered again, 1 changed" in ranked.output
    same = runner.invoke(app, ["sources", "update", "ehr-b", "--trust-rank", "99"])
    assert "nothing to change" in same.output
    moved = runner.invoke(
        app, ["sources", "update", "ehr-b", "--url", str(tmp_path / "ehr-b"), "--schedule", "1h"]
    )
    assert moved.exit_code == 0 and "changed schedule" in moved.output, moved.output
    for bad in (
        ["sources", "update", "ehr-b", "--schedule", "1h", "--no-schedule"],
        ["sources", "update", "ehr-b", "--schedule", "sometimes"],
        ["sources", "update", "ehr-b", "--rename", "ehr-a"],
        ["sources", "update", "nope", "--trust-rank", "1"],
        ["sources", "remove", "nope", "--yes"],
    ):
        failed = runner.invoke(app, bad)
        assert failed.exit_code == 2, (bad, failed.output)

    kept = runner.invoke(app, ["sources", "remove", "ehr-a"], input="n\n")
    assert kept.exit_code == 1 and "nothing removed" in kept.output
    assert "1 Encounter, 1 Patient" in kept.output and "1 golden records" in kept.output
    removed = runner.invoke(app, ["sources", "remove", "ehr-a"], input="y\n")
    assert removed.exit_code == 0, removed.output
    assert "ehr-a removed" in removed.output and "2 source records erased" in removed.output
    listed = runner.invoke(app, ["sources", "list"])
    assert "ehr-a" not in listed.output and "ehr-b" in listed.output
