"""The Encounter page path: ids of the rows a page inserts, golden lookups by status,
and many Encounters through one page (both backends, real databases)."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from store.bulk import BulkWriter
from store.models import Encounter, Link, Outbox, SourceRecord
from store.types import utcnow
from sync import ingest_page
from sync.encounters import _RECORD_KEY, _sqlite_inserted_ids, golden_ids_of_patients
from tests.sync.helpers import add_source, encounter, patient


def test_every_new_encounter_row_points_at_its_own_record_and_event(
    session_factory: sessionmaker[Session],
) -> None:
    """A page mixing new Encounters, changed ones and ones already stored (with gaps in
    the record ids left by deletions) writes each encounter row, record and event for
    the right resource."""
    source_id = add_source(session_factory)
    other = add_source(session_factory, "other")
    rng = random.Random(3)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1"), patient("p2")], "p"))
        # Rows of another source between ours, and a gap (a deleted record).
        ingest_page(session, other, Page("Encounter", [encounter("o1", "x")], "o"))
        first = [encounter(f"e{i}", rng.choice(["p1", "p2", "p9"])) for i in range(40)]
        ingest_page(session, source_id, Page("Encounter", first, "e1"))
        ingest_page(session, other, Page("Encounter", [encounter("o2", "x")], "o", ["o1"]))
        session.commit()
    with session_factory() as session:
        page = [encounter(f"e{i}", "p1", status="cancelled") for i in range(0, 40, 3)]
        page += [encounter(f"e{i}", rng.choice(["p1", "p2", "p9"])) for i in range(40, 140)]
        result = ingest_page(session, source_id, Page("Encounter", page, "e2"))
        session.commit()
    assert result.stored == len(page)
    with session_factory() as session:
        rows = session.execute(
            select(Encounter, SourceRecord)
            .join(SourceRecord, SourceRecord.id == Encounter.source_record_id)
            .where(SourceRecord.source_id == source_id)
        ).all()
        assert len(rows) == 140
        golden = dict(
            session.execute(
                select(SourceRecord.resource_id, Link.golden_id).join(
                    Link, Link.source_record_id == SourceRecord.id
                )
            ).all()
        )
        for enc, record in rows:
            assert enc.resource["id"] == record.resource_id
            assert enc.patient_resource_id == enc.resource["subject"]["reference"][8:]
            assert enc.golden_id == golden.get(enc.patient_resource_id or "")
            assert record.status == ("pending" if enc.golden_id is None else "active")
        by_id = {enc.id: record.resource_id for enc, record in rows}
        created = session.scalars(
            select(Outbox).where(Outbox.event_type == "encounter.created")
        ).all()
        ours = [e for e in created if e.payload["source_id"] == source_id]
        assert len(ours) == 140
        for event in ours:
            assert by_id[event.payload["encounter_id"]] == event.payload["resource_id"]
            assert event.aggregate_id == str(event.payload["encounter_id"])


def test_golden_lookup_returns_only_active_linked_patients(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    other = add_source(session_factory, "other")
    with session_factory() as session:
        people = [patient("p1"), patient("p2", "Nguyen", "Van"), patient("p3", "Berg", "Ola")]
        ingest_page(session, source_id, Page("Patient", people, "p"))
        ingest_page(session, other, Page("Patient", [patient("p4", "Ito", "Aki")], "q"))
        session.commit()
    with session_factory() as session:
        # p2 arrives again invalid (quarantined); p3 is deleted.
        bad = patient("p2", "Nguyen", "Van", birth="1980-13-45")
        ingest_page(session, source_id, Page("Patient", [bad], "p2", ["p3"]))
        session.commit()
    with session_factory() as session:
        statuses = {r.resource_id: r.status for r in session.scalars(select(SourceRecord))}
        assert statuses == {"p1": "active", "p2": "quarantined", "p3": "deleted", "p4": "active"}
        found = golden_ids_of_patients(session, source_id, ["p1", "p2", "p3", "p4", "nobody"])
        assert set(found) == {"p1"}
        assert set(golden_ids_of_patients(session, other, ["p1", "p4"])) == {"p4"}
        assert golden_ids_of_patients(session, source_id, []) == {}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_inserted_ids_are_vouched_for_or_refused(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        bulk = BulkWriter(session)
        now = bulk.timestamp(utcnow())
        rows = [
            (source_id, "Encounter", f"x{i}", None, None, None, None, None, "active", now, now)
            for i in range(5)
        ]
        columns = (
            *_RECORD_KEY,
            *("raw", "normalized", "content_hash", "version_id"),
            *("last_updated", "status", "updated_at", "received_at"),
        )
        assert bulk.insert("source_record", columns, rows) is None
        keys = [row[:3] for row in rows]
        ids = _sqlite_inserted_ids(bulk, "source_record", _RECORD_KEY, keys)
        assert ids is not None
        stored = dict(
            session.execute(
                select(SourceRecord.id, SourceRecord.resource_id).where(
                    SourceRecord.source_id == source_id
                )
            ).all()
        )
        assert dict(ids) == stored
        # Keys that are not the rows the last insert wrote are refused, not trusted.
        assert _sqlite_inserted_ids(bulk, "source_record", _RECORD_KEY, keys[:-1]) is None
        assert _sqlite_inserted_ids(bulk, "source_record", _RECORD_KEY, keys[::-1]) is None
        wrong_source = [(source_id + 1, *key[1:]) for key in keys]
        assert _sqlite_inserted_ids(bulk, "source_record", _RECORD_KEY, wrong_source) is None
        session.rollback()
