"""Reprocessing quarantined records: after a fix on askonce's side, they need not wait
for the EHR to send them again (sync.reprocess, ``askonce sources reprocess``, the admin
API)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

import sync.context
import sync.patients
from askonce.cli import app
from connectors import Page
from fhir_mapping import InvalidResource, Issue
from mpi import MatchSettings
from store.models import Encounter, Link
from store.models import Source as SourceRow
from sync import ReprocessError, TaskContext, ingest_page, reprocess_quarantined
from sync.pipeline import UnknownSourceError
from sync.records import SURROGATE_ERROR
from sync.runner import bound_patient_options
from tests.sync.helpers import add_source, encounter, events, patient, records, write_ndjson

#: Resource ids an over-strict release of the Patient mapping rejects (see ``strict``).
REJECTED: set[str] = set()


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """A Patient mapping that rejects the ids in the yielded set, as a release with an
    over-strict validation would; emptying the set is the upgrade that fixes it."""
    real = sync.patients.parse_patient

    def parse(raw: dict[str, Any], **options: Any) -> Any:
        if raw.get("id") in REJECTED:
            issue = Issue("Patient.telecom[0].value", "not a phone number")
            raise InvalidResource("Patient", raw.get("id"), [issue])
        return real(raw, **options)

    monkeypatch.setattr(sync.patients, "parse_patient", parse)
    REJECTED.clear()
    yield REJECTED
    REJECTED.clear()


def quarantine_two(session_factory: sessionmaker[Session], rejected: set[str]) -> int:
    """A source whose p1 and p2 the strict mapping quarantined, with e1 waiting for p1,
    and p3 stored; then the fix (nothing is rejected any more)."""
    source_id = add_source(session_factory)
    rejected.update({"p1", "p2"})
    page = Page("Patient", [patient("p1"), patient("p2", "Lee", "Kim"), patient("p3", "Roe")], "c")
    with session_factory() as session:
        ingest_page(session, source_id, page)
        ingest_page(session, source_id, Page("Encounter", [encounter("e1", "p1")], "e"))
        session.commit()
    rejected.clear()
    return source_id


def test_a_fixed_cause_releases_quarantined_patients_and_their_waiting_encounters(
    session_factory: sessionmaker[Session], strict: set[str]
) -> None:
    source_id = quarantine_two(session_factory, strict)
    with session_factory() as session:
        assert [r.resource_id for r in records(session, source_id, status="quarantined")] == [
            "p1",
            "p2",
        ]
        assert session.scalars(select(Encounter)).one().golden_id is None
        created = events(session, "patient.created")
        # Why the command exists: the source sends the same content, which is skipped.
        again = Page("Patient", [patient("p1"), patient("p2", "Lee", "Kim")], "c")
        skipped = ingest_page(session, source_id, again)
        session.commit()
    assert (skipped.skipped, skipped.stored) == (2, 0)

    result = reprocess_quarantined(session_factory, source_id)

    assert (result.reprocessed, result.ingest.stored, result.ingest.quarantined) == (2, 2, 0)
    assert (result.ingest.attached, result.remaining) == (1, 0)
    with session_factory() as session:
        assert records(session, source_id, status="quarantined") == []
        active = records(session, source_id, status="active")
        assert [r.resource_id for r in active] == ["e1", "p1", "p2", "p3"]
        assert sorted(result.record_ids) == sorted(
            r.id for r in active if r.resource_id in ("p1", "p2")
        )
        # The same records, not new ones; with their content hash back, so the next sync
        # skips them again.
        assert len(records(session, source_id)) == 4
        assert all(r.content_hash and r.error is None for r in active)
        p1 = next(r for r in active if r.resource_id == "p1")
        golden = session.scalar(select(Link.golden_id).where(Link.source_record_id == p1.id))
        assert session.scalars(select(Encounter)).one().golden_id == golden is not None
        assert events(session, "patient.created") > created
        assert events(session, "encounter.updated") == 1
        resent = ingest_page(session, source_id, again)
        session.commit()
    assert resent.skipped == 2


def test_what_is_still_invalid_stays_quarantined_with_its_error_as_of_now(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("bad", birth="1980-13-45")], "c"))
        session.commit()
        (before,) = records(session, source_id, status="quarantined")
        record_id, first_error = before.id, before.error
    result = reprocess_quarantined(session_factory, source_id)
    assert (result.reprocessed, result.ingest.stored, result.ingest.quarantined) == (1, 0, 1)
    with session_factory() as session:
        (after,) = records(session, source_id)
        assert (after.id, after.status) == (record_id, "quarantined")
        assert after.error == first_error and after.content_hash


def test_limit_type_and_ids_choose_what_is_reprocessed(
    session_factory: sessionmaker[Session], strict: set[str]
) -> None:
    source_id = quarantine_two(session_factory, strict)
    with session_factory() as session:
        ids = {r.resource_id: r.id for r in records(session, source_id, status="quarantined")}

    only = reprocess_quarantined(session_factory, source_id, record_ids=[ids["p2"]])
    assert (only.reprocessed, only.ingest.stored, only.remaining) == (1, 1, 0)
    none = reprocess_quarantined(session_factory, source_id, resource_type="Encounter")
    assert (none.reprocessed, none.remaining) == (0, 0)
    with session_factory() as session:
        assert [r.resource_id for r in records(session, source_id, status="quarantined")] == ["p1"]

    strict.add("p1")  # the cause is not fixed for p1: it stays, counted, not left waiting
    capped = reprocess_quarantined(session_factory, source_id, limit=1)
    assert (capped.reprocessed, capped.ingest.quarantined, capped.remaining) == (1, 1, 0)


def test_limit_leaves_the_rest_counted(
    session_factory: sessionmaker[Session], strict: set[str]
) -> None:
    source_id = quarantine_two(session_factory, strict)
    first = reprocess_quarantined(session_factory, source_id, limit=1)
    assert (first.reprocessed, first.ingest.stored, first.remaining) == (1, 1, 1)
    second = reprocess_quarantined(session_factory, source_id, limit=1)
    assert (second.reprocessed, second.ingest.stored, second.remaining) == (1, 1, 0)


def test_entries_without_a_resource_or_an_id_are_left_alone(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "structure", "diagnostics": "line 3: not JSON"}],
    }
    no_id = {"resourceType": "Patient", "name": [{"family": "Anon"}]}
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [no_id], "c", outcomes=[outcome]))
        session.commit()
        kept = {(r.resource_id, r.updated_at) for r in records(session, source_id)}
    assert len(kept) == 2
    result = reprocess_quarantined(session_factory, source_id)
    assert (result.reprocessed, result.remaining) == (0, 0)
    with session_factory() as session:
        assert {(r.resource_id, r.updated_at) for r in records(session, source_id)} == kept


def test_unknown_sources_and_unsynced_types_are_refused(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with pytest.raises(UnknownSourceError):
        reprocess_quarantined(session_factory, source_id + 100)
    with pytest.raises(ReprocessError, match="Observation is not synced"):
        reprocess_quarantined(session_factory, source_id, resource_type="Observation")


def test_the_cli_reprocesses_a_source(cli_db: str, tmp_path: Path, strict: set[str]) -> None:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient("p1"), patient("bad", birth="x")])
    write_ndjson(folder, "Encounter", [encounter("e1", "p1")])
    runner = CliRunner()
    add = ["sources", "add", "ehr-x", "--kind", "ndjson", "--url", str(folder)]
    assert runner.invoke(app, add).exit_code == 0
    strict.add("p1")
    synced = runner.invoke(app, ["sync", "ehr-x"])
    assert "quarantined 2" in synced.output, synced.output
    strict.clear()
    done = runner.invoke(app, ["sources", "reprocess", "ehr-x"])
    assert done.exit_code == 0, done.output
    assert "reprocessed 2" in done.output and "stored 1" in done.output
    assert "still quarantined 1" in done.output and "encounters attached 1" in done.output
    status = runner.invoke(app, ["sources", "status", "ehr-x"])
    assert "Patient/bad" in status.output and "Patient/p1" not in status.output
    wrong = runner.invoke(app, ["sources", "reprocess", "ehr-x", "--type", "Observation"])
    assert wrong.exit_code == 2 and "not synced" in wrong.output
    missing = runner.invoke(app, ["sources", "reprocess", "nope"])
    assert missing.exit_code == 2 and "no source named" in missing.output
    with_ids = runner.invoke(app, ["sources", "reprocess", "ehr-x", "--id", "999999"])
    assert with_ids.exit_code == 0 and "reprocessed 0" in with_ids.output


def test_work_outside_a_run_takes_the_bound_context_settings(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Push intake, MLLP and reprocessing read a source's options through one function:
    the source's own, over the process's bound context (region, match settings)."""
    source_id = add_source(session_factory, config={"mrn_system": "urn:mrn"})
    with session_factory() as session:
        source = session.get(SourceRow, source_id)
        assert source is not None
        monkeypatch.setattr(sync.context, "_current", None)
        plain = bound_patient_options(source)
        assert (plain.default_region, plain.match_settings, plain.mrn_system) == (
            "US",
            None,
            "urn:mrn",
        )
        settings = MatchSettings(certain=99.0)
        context = TaskContext(
            engine=session.get_bind(),  # type: ignore[arg-type]
            session_factory=session_factory,
            default_region="GB",
            match_settings=settings,
        )
        monkeypatch.setattr(sync.context, "_current", context)
        bound = bound_patient_options(source)
        assert (bound.default_region, bound.match_settings) == ("GB", settings)
        assert bound_patient_options(source, "FR").default_region == "FR"


def test_a_resource_not_kept_as_sent_is_left_alone(session_factory: sessionmaker[Session]) -> None:
    """A lone surrogate was replaced by U+FFFD to keep the resource: replaying that copy
    could store text the source never sent."""
    source_id = add_source(session_factory)
    with session_factory() as session:
        page = Page("Patient", [patient("p1", "Ok\ud800afor")], "c")
        ingest_page(session, source_id, page)
        session.commit()
        (kept,) = records(session, source_id, status="quarantined")
        assert kept.error["issues"][0]["reason"] == SURROGATE_ERROR
        before = (kept.content_hash, kept.updated_at)
    result = reprocess_quarantined(session_factory, source_id)
    assert (result.reprocessed, result.ingest.stored) == (0, 0)
    with session_factory() as session:
        (kept,) = records(session, source_id)
        assert (kept.status, kept.content_hash, kept.updated_at) == ("quarantined", *before)
