"""ingest_page: what a page of a source does to the records, golden records and outbox."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from mpi import golden_block_keys, holds_block_locks, uses_block_locks
from mpi.resolve import lock_slots
from store import CursorRepository
from store.models import Encounter, GoldenPatient, Link, Outbox, SourceRecord
from store.types import as_utc
from sync import content_hash, ingest_page
from sync.encounters import golden_ids_of_patients
from tests.sync.helpers import add_source, encounter, events, held_block_slots, patient, records


def test_new_patients_are_stored_linked_and_the_cursor_commits_with_them(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        page = Page("Patient", [patient("p1"), patient("p2", "Nguyen", "Van")], "c1")
        result = ingest_page(session, source_id, page)
        session.commit()
    assert (result.resources, result.stored, result.quarantined) == (2, 2, 0)
    with session_factory() as session:
        stored = records(session, source_id, status="active")
        assert [r.resource_id for r in stored] == ["p1", "p2"]
        assert all(r.normalized and r.normalized["resource_id"] == r.resource_id for r in stored)
        links = session.scalars(select(Link)).all()
        assert {link.source_record_id for link in links} == {r.id for r in stored}
        assert CursorRepository(session).get(source_id, "Patient") == "c1"
        assert events(session, "patient.created") >= 1


def test_a_page_that_is_not_committed_leaves_neither_records_nor_cursor(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "c1"))
        session.rollback()
    with session_factory() as session:
        assert records(session, source_id) == []
        assert CursorRepository(session).get(source_id, "Patient") is None


def test_an_unchanged_resource_is_skipped_even_with_new_meta(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "c1"))
        session.commit()
    again = patient("p1", updated="2026-02-01T00:00:00Z")
    again["meta"]["versionId"] = "7"
    with session_factory() as session:
        before = events(session, "patient.created") + events(session, "patient.updated")
        result = ingest_page(session, source_id, Page("Patient", [again], "c2"))
        session.commit()
        after = events(session, "patient.created") + events(session, "patient.updated")
    assert (result.skipped, result.stored) == (1, 0)
    assert after == before
    assert content_hash(again) == content_hash(patient("p1"))


def test_invalid_resources_are_quarantined_with_their_reason_and_the_rest_is_kept(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    bad_date = patient("p-bad", birth="1980-13-45")
    no_id = {"resourceType": "Patient", "name": [{"family": "Anon"}]}
    with session_factory() as session:
        page = Page("Patient", [patient("p1"), bad_date, no_id, "not an object"], "c1")
        result = ingest_page(session, source_id, page)
        session.commit()
    assert (result.resources, result.stored, result.quarantined) == (4, 1, 3)
    with session_factory() as session:
        quarantined = records(session, source_id, status="quarantined")
        assert len(quarantined) == 3
        bad = next(r for r in quarantined if r.resource_id == "p-bad")
        assert bad.raw == bad_date
        assert any("birthDate" in i["path"] for i in bad.error["issues"])
        assert all(r.error and r.error["issues"] for r in quarantined)
        assert [r.resource_id for r in records(session, source_id, status="active")] == ["p1"]


def test_an_encounter_waits_for_its_patient_then_is_attached(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        result = ingest_page(session, source_id, Page("Encounter", [encounter("e1", "p1")], "e"))
        session.commit()
    assert result.waiting == 1
    with session_factory() as session:
        (waiting,) = session.scalars(select(Encounter)).all()
        assert waiting.golden_id is None
        arrived = as_utc(waiting.last_updated)
        assert records(session, source_id, resource_type="Encounter")[0].status == "pending"
        assert events(session, "encounter.created") == 1
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "p"))
        session.commit()
    with session_factory() as session:
        attached = session.scalars(select(Encounter)).one()
        golden = session.scalar(
            select(Link.golden_id)
            .join(SourceRecord, SourceRecord.id == Link.source_record_id)
            .where(SourceRecord.resource_id == "p1")
        )
        assert attached.golden_id == golden is not None
        # Its subject changed: so did its lastUpdated (a client following _since sees it).
        assert arrived is not None and as_utc(attached.last_updated) > arrived  # type: ignore[operator]
        assert records(session, source_id, resource_type="Encounter")[0].status == "active"
        assert events(session, "encounter.updated") == 1


def test_encounters_of_a_known_patient_are_attached_at_once_and_updates_are_events(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "p"))
        page = Page("Encounter", [encounter("e1", "p1"), encounter("e2", "p1")], "e1")
        first = ingest_page(session, source_id, page)
        session.commit()
    assert (first.stored, first.waiting) == (2, 0)
    with session_factory() as session:
        changed = encounter("e1", "p1", status="cancelled")
        again = ingest_page(
            session, source_id, Page("Encounter", [changed, encounter("e2", "p1")], "e2")
        )
        session.commit()
        assert (again.stored, again.skipped) == (1, 1)
        rows = {e.resource["id"]: e for e in session.scalars(select(Encounter))}
        assert rows["e1"].status == "cancelled"
        assert rows["e1"].golden_id is not None
        assert events(session, "encounter.created") == 2
        assert events(session, "encounter.updated") == 1


def test_stored_encounters_read_back_as_received(session_factory: sessionmaker[Session]) -> None:
    source_id = add_source(session_factory)
    received = encounter("e1", "p1")
    received["serviceProvider"] = {"display": 'Klinik Süd \u2013 "Ost"'}
    received["period"] = {"start": "2025-03-01T08:00:00+02:00", "end": "2025-03"}
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "p"))
        ingest_page(session, source_id, Page("Encounter", [received], "e"))
        session.commit()
    with session_factory() as session:
        (record,) = records(session, source_id, resource_type="Encounter")
        stored = session.scalars(select(Encounter)).one()
        assert record.raw == stored.resource == received
        assert record.content_hash == content_hash(received)
        assert record.normalized is not None and record.normalized["patient_id"] == "p1"
        assert record.last_updated is not None and record.last_updated.tzinfo is not None
        assert record.last_updated.isoformat() == "2026-01-10T10:00:00+00:00"
        assert stored.period_start is not None and stored.period_end is not None
        assert stored.period_start.isoformat() == "2025-03-01T06:00:00+00:00"
        assert stored.period_end.isoformat() == "2025-03-01T00:00:00+00:00"
        window = select(Encounter.id).where(
            Encounter.period_start >= datetime(2025, 3, 1, 5, 59, tzinfo=UTC),
            Encounter.period_start < datetime(2025, 3, 1, 6, 1, tzinfo=UTC),
        )
        assert session.scalars(window).all() == [stored.id]
        (event,) = session.scalars(select(Outbox)).all()[-1:]
        assert event.event_type == "encounter.created"
        assert event.payload == {
            "encounter_id": stored.id,
            "golden_id": stored.golden_id,
            "source_id": source_id,
            "resource_id": "e1",
        }


def test_a_quarantined_encounter_that_becomes_valid_is_stored_and_announced(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    broken = encounter("e1", "p1", status="not-a-status")
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "p"))
        first = ingest_page(session, source_id, Page("Encounter", [broken], "e1"))
        session.commit()
    assert (first.stored, first.quarantined) == (0, 1)
    with session_factory() as session:
        fixed = ingest_page(session, source_id, Page("Encounter", [encounter("e1", "p1")], "e2"))
        session.commit()
    assert (fixed.stored, fixed.quarantined) == (1, 0)
    with session_factory() as session:
        (record,) = records(session, source_id, resource_type="Encounter")
        assert (record.status, record.error) == ("active", None)
        stored = session.scalars(select(Encounter)).one()
        assert stored.source_record_id == record.id and stored.golden_id is not None
        assert events(session, "encounter.created") == 1


def test_deletions_mark_records_deleted_and_remove_encounters(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1"), patient("p2", "Lee")], "p"))
        ingest_page(session, source_id, Page("Encounter", [encounter("e1", "p1")], "e"))
        session.commit()
    with session_factory() as session:
        gone = ingest_page(session, source_id, Page("Patient", [], "p2", deleted=["p2", "nope"]))
        enc_gone = ingest_page(session, source_id, Page("Encounter", [], "e2", deleted=["e1"]))
        session.commit()
    assert (gone.deleted, enc_gone.deleted) == (1, 1)
    with session_factory() as session:
        assert [r.resource_id for r in records(session, source_id, status="deleted")] == [
            "e1",
            "p2",
        ]
        assert session.scalars(select(Encounter)).all() == []
        assert events(session, "encounter.deleted") == 1
    # The deleted version, delivered late (a push overtaken by the deletion): still deleted.
    with session_factory() as session:
        late = ingest_page(session, source_id, Page("Patient", [patient("p2", "Lee")], None))
        older = patient("p2", "Lee", updated="2025-12-01T00:00:00Z", gender="male")
        stale = ingest_page(session, source_id, Page("Patient", [older], None))
        session.commit()
    assert (late.stored, late.skipped, stale.stored, stale.skipped) == (0, 1, 0, 1)
    # A deleted resource created again (a newer version) is stored again.
    with session_factory() as session:
        again = patient("p2", "Lee", updated="2026-02-01T00:00:00Z")
        back = ingest_page(session, source_id, Page("Patient", [again], "p3"))
        session.commit()
    assert back.stored == 1
    with session_factory() as session:
        assert records(session, source_id, resource_id="p2")[0].status == "active"


def test_a_page_locks_its_deletions_golden_records_with_its_own_records(
    session_factory: sessionmaker[Session],
) -> None:
    """One lock call per transaction (a second one could deadlock with another worker):
    the golden record a page's deletion empties is locked by the same call as the page's
    new records, on PostgreSQL."""
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p2", "Lee")], "p"))
        session.commit()
    with session_factory() as session:
        (gone_golden,) = golden_ids_of_patients(session, source_id, ["p2"]).values()
        wanted = lock_slots(golden_block_keys(session, [gone_golden]))
        result = ingest_page(
            session, source_id, Page("Patient", [patient("p1")], "p2", deleted=["p2"])
        )
        assert (result.stored, result.deleted) == (1, 1)
        if uses_block_locks(session):
            assert holds_block_locks(session)
            assert wanted and set(wanted) <= held_block_slots(session)
        session.commit()
        golden = session.get(GoldenPatient, gone_golden)
        assert golden is not None and golden.status == "deleted"


def test_duplicates_within_a_page_keep_the_newest(session_factory: sessionmaker[Session]) -> None:
    source_id = add_source(session_factory)
    older = patient("p1", "Old", updated="2026-01-01T00:00:00Z")
    newer = patient("p1", "New", updated="2026-01-02T00:00:00Z")
    with session_factory() as session:
        result = ingest_page(session, source_id, Page("Patient", [newer, older], "c"))
        session.commit()
        (record,) = records(session, source_id)
    assert (result.stored, result.skipped) == (1, 1)
    assert record.raw["name"][0]["family"] == "New"


def test_an_older_version_never_overwrites_a_newer_one(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(
            session,
            source_id,
            Page("Patient", [patient("p1", "New", updated="2026-03-01T00:00:00Z")], "c"),
        )
        stale = ingest_page(
            session,
            source_id,
            Page("Patient", [patient("p1", "Old", updated="2026-01-01T00:00:00Z")], "c"),
            write_cursor=False,
        )
        session.commit()
        (record,) = records(session, source_id)
    assert stale.skipped == 1
    assert record.raw["name"][0]["family"] == "New"


def test_unreadable_lines_reported_by_the_connector_are_quarantined(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "structure",
                "diagnostics": "Patient.ndjson line 3: not valid JSON",
            }
        ],
    }
    with session_factory() as session:
        result = ingest_page(
            session, source_id, Page("Patient", [patient("p1")], "c", outcomes=[outcome])
        )
        session.commit()
        (bad,) = records(session, source_id, status="quarantined")
    assert (result.stored, result.quarantined, result.unreadable) == (1, 1, 1)
    assert "line 3" in bad.error["issues"][0]["reason"]
