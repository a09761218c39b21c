"""member_records reads its rows at the driver level: the same members, timestamps and
order as the SQLAlchemy query it replaced (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from fhir_mapping import SourcePatient
from mpi.storage import PATIENT_CONFIRMED_FLAG, member_records
from mpi.survivorship import MemberRecord
from store.bulk import ROWS_IN_CHUNK
from store.models import GoldenPatient, Link, Source, SourceRecord
from tests.mpi.helpers import add_record, add_source, fhir_patient


def _reference(
    session: Session, record_ids: list[int], known: dict[int, SourcePatient]
) -> list[MemberRecord]:
    """The query member_records ran before (every record is in ``known`` here)."""
    rows = session.execute(
        select(
            SourceRecord.id,
            SourceRecord.last_updated,
            SourceRecord.received_at,
            SourceRecord.source_id,
        )
        .where(SourceRecord.status == "active", SourceRecord.id.in_(record_ids))
        .order_by(SourceRecord.id)
    ).all()
    sources = {
        source.id: (source.trust_rank, bool((source.config or {}).get(PATIENT_CONFIRMED_FLAG)))
        for source in session.scalars(select(Source))
    }
    return [
        MemberRecord(
            record_id=row.id,
            patient=known[row.id],
            trust_rank=sources[row.source_id][0],
            observed_at=row.last_updated or row.received_at,
            confirmed=sources[row.source_id][1],
        )
        for row in rows
    ]


def _same(got: list[MemberRecord], expected: list[MemberRecord]) -> None:
    assert got == expected
    for a, b in zip(got, expected, strict=True):  # aware, in UTC, like the ORM's
        assert a.observed_at is not None and b.observed_at is not None
        assert a.observed_at.tzinfo is b.observed_at.tzinfo is UTC
        assert a.patient is b.patient


def test_members_equal_the_orm_query(session: Session) -> None:
    plain = add_source(session, "plain", 40)
    portal = add_source(session, "portal", 70)
    portal.config = {PATIENT_CONFIRMED_FLAG: True}
    plus_two = timezone(timedelta(hours=2))
    session.add(GoldenPatient(id="g-1", version=1, resource={}))
    known: dict[int, SourcePatient] = {}
    for i in range(12):
        row, patient = add_record(session, portal if i % 3 == 0 else plain, fhir_patient(f"r{i}"))
        row.received_at = datetime(2024, 5, 1, 8, 0, i, 123456, tzinfo=UTC)
        if i % 2:  # the source's lastUpdated, given in another zone
            row.last_updated = datetime(2023, 1, 2, 3, 4, 5, 999, tzinfo=plus_two)
        if i == 7:
            row.status = "deleted"
        session.add(Link(source_record_id=row.id, golden_id="g-1", grade="certain", score=1.0))
        known[row.id] = patient
    session.flush()
    session.expire_all()
    ids = sorted(known)
    expected = _reference(session, ids, known)
    assert len(expected) == 11
    _same(member_records(session, ids[::-1], known=known), expected)
    # The golden record's members (steward path) read the same rows.
    by_golden = member_records(session, golden_id="g-1")
    assert [(m.record_id, m.observed_at, m.trust_rank, m.confirmed) for m in by_golden] == [
        (m.record_id, m.observed_at, m.trust_rank, m.confirmed) for m in expected
    ]


def test_more_records_than_one_statement_reads(session: Session) -> None:
    source = add_source(session, "big")
    _, patient = add_record(session, source, fhir_patient("seed"))
    stamp = datetime(2024, 1, 1, tzinfo=UTC)
    session.execute(
        insert(SourceRecord),
        [
            {
                "source_id": source.id,
                "resource_type": "Patient",
                "resource_id": f"bulk-{i}",
                "raw": {},
                "normalized": {},
                "content_hash": f"h{i}",
                "status": "active",
                "received_at": stamp + timedelta(seconds=i),
            }
            for i in range(ROWS_IN_CHUNK + 50)
        ],
    )
    ids = list(session.scalars(select(SourceRecord.id)))
    known = dict.fromkeys(ids, patient)
    got = member_records(session, ids[::-1], known=known)
    assert [m.record_id for m in got] == sorted(ids)
    _same(got, _reference(session, ids, known))
