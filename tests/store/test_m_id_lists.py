"""Id-list lookups whose statement text does not depend on the number of ids (issue #6:
a statement per list length grew the driver's and SQLAlchemy's caches with the run)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from mpi.reads import Reads
from store.bulk import json_ids, one_of
from store.models import GoldenPatient, Link, Source, SourceRecord
from sync.records import load_records, load_states


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL text of every statement the engine sends to the driver."""
    sent: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        sent.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield sent
    event.remove(engine, "before_cursor_execute", record)


def _records(session: Session, count: int) -> list[SourceRecord]:
    source = Source(name="ehr", kind="ndjson", base_url="/x")
    session.add(source)
    session.flush()
    records = [
        SourceRecord(
            source_id=source.id,
            resource_type="Patient",
            resource_id=f"p{i}",
            content_hash=f"h{i}",
            status="active",
        )
        for i in range(count)
    ]
    session.add_all(records)
    session.flush()
    return records


def test_json_ids_takes_ints_and_strs_only() -> None:
    assert json_ids([1, 2, "a"]) == '[1,2,"a"]'
    assert json_ids([]) == "[]"
    assert json_ids([True]) is None
    assert json_ids([1.5]) is None
    assert json_ids([2**70]) is None
    assert json_ids(["\ud800"]) is None


def test_one_of_is_one_statement_for_every_list_length(
    session: Session, statements: list[str]
) -> None:
    records = _records(session, 40)
    ids = [r.id for r in records]
    statements.clear()
    for size in (1, 2, 3, 7, 40):
        found = session.scalars(
            select(SourceRecord.resource_id).where(one_of(session, SourceRecord.id, ids[:size]))
        ).all()
        assert sorted(found) == sorted(f"p{i}" for i in range(size))
        by_text = session.scalars(
            select(SourceRecord.id).where(
                one_of(session, SourceRecord.resource_id, [f"p{i}" for i in range(size)])
            )
        ).all()
        assert sorted(by_text) == ids[:size]
    assert len(statements) == 10
    assert len(set(statements)) == 2
    # As with ``IN (?, …)``, the column's affinity applies: "7" finds the integer 7.
    assert session.scalars(
        select(SourceRecord.id).where(one_of(session, SourceRecord.id, [str(ids[6])]))
    ).all() == [ids[6]]


def test_one_of_with_no_values_and_other_types(session: Session) -> None:
    records = _records(session, 3)
    assert not session.scalars(
        select(SourceRecord.id).where(one_of(session, SourceRecord.id, []))
    ).all()
    ids = tuple(r.id for r in records)
    assert sorted(
        session.scalars(select(SourceRecord.id).where(one_of(session, SourceRecord.id, ids)))
    ) == list(ids)


def test_record_lookups_are_constant_statements(session: Session, statements: list[str]) -> None:
    """load_records' statement text is the same whatever the number of ids; load_states
    reads at the driver level through store.bulk.rows_in (one text per template by
    construction), so it sends nothing through the engine."""
    _records(session, 30)
    source_id = session.scalars(select(Source.id)).one()
    statements.clear()
    for size in (1, 5, 30):
        wanted = [f"p{i}" for i in range(size)] + ["absent"]
        states = load_states(session, source_id, "Patient", wanted)
        records = load_records(session, source_id, "Patient", wanted)
        assert set(states) == set(records) == set(wanted[:-1])
        for resource_id, state in states.items():
            record = records[resource_id]
            assert (state.id, state.status, state.content_hash, state.last_updated) == (
                record.id,
                record.status,
                record.content_hash,
                record.last_updated,
            )
    assert len(set(statements)) == 1


def test_reads_are_one_statement_per_template(session: Session) -> None:
    records = _records(session, 12)
    goldens = [GoldenPatient(id=f"g{i}") for i in range(4)]
    session.add_all(goldens)
    session.flush()
    session.add_all(
        Link(source_record_id=r.id, golden_id=f"g{i % 4}", grade="certain")
        for i, r in enumerate(records)
    )
    reads = Reads(session)
    sent: list[str] = []
    dbapi = reads.dbapi
    assert dbapi is not None
    if not reads.postgresql:
        dbapi.set_trace_callback(sent.append)
    try:
        for size in (1, 2, 12):
            links = reads.links([r.id for r in records[:size]])
            assert sorted(row[0] for row in links) == [r.id for r in records[:size]]
        for size in (1, 3):
            members = reads.members([f"g{i}" for i in range(size)])
            assert len(members) == 3 * size
        assert reads.links([]) == []
    finally:
        if not reads.postgresql:
            dbapi.set_trace_callback(None)
    if not reads.postgresql:
        # The trace shows the statement with its parameters expanded: 5 lookups, each a
        # single JSON array parameter.
        assert len(sent) == 5
        assert all("json_each('[" in statement for statement in sent)
