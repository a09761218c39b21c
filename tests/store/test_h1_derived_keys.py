"""Migration 0002: derived rows lost the foreign keys checked on every insert, not the
deletes a user relies on (deleting a source, a record or a golden record still removes,
or unlinks, what was derived from it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, func, insert, inspect, select, text
from sqlalchemy.orm import Session

from store.models import (
    BlockKey,
    Encounter,
    FieldProvenance,
    GoldenPatient,
    GoldenSearchToken,
    Source,
    SourceRecord,
)


def _count(session: Session, model: Any, *where: Any) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _record(session: Session, name: str) -> tuple[int, int]:
    source_id = session.execute(
        insert(Source).values(name=name, kind="ndjson", base_url="/tmp/x").returning(Source.id)
    ).scalar_one()
    record_id = session.execute(
        insert(SourceRecord)
        .values(source_id=source_id, resource_type="Patient", resource_id="p1")
        .returning(SourceRecord.id)
    ).scalar_one()
    return source_id, record_id


def _derived(session: Session, record_id: int, source_id: int, golden_id: str) -> None:
    session.execute(insert(GoldenPatient).values(id=golden_id, resource={}))
    session.execute(insert(BlockKey).values(key=f"k{record_id}", source_record_id=record_id))
    session.execute(
        insert(FieldProvenance).values(
            golden_id=golden_id, field="gender", value="f", source_record_id=record_id, rule="r"
        )
    )
    session.execute(
        insert(GoldenSearchToken).values(golden_id=golden_id, param="gender", value="f")
    )
    session.execute(
        insert(Encounter).values(
            source_record_id=record_id, source_id=source_id, golden_id=golden_id, resource={}
        )
    )


def test_deleting_a_source_or_a_record_still_deletes_what_came_from_it(engine: Engine) -> None:
    with Session(engine) as session:
        first, first_record = _record(session, "one")
        second, second_record = _record(session, "two")
        _derived(session, first_record, first, "g1")
        _derived(session, second_record, second, "g2")
        session.commit()
        session.execute(delete(Source).where(Source.id == first))
        session.execute(delete(SourceRecord).where(SourceRecord.id == second_record))
        session.commit()
        assert _count(session, Encounter) == 0
        assert _count(session, BlockKey) == 0
        # Provenance stays with its golden record, no longer pointing at the record.
        assert _count(session, FieldProvenance) == 2
        assert _count(session, FieldProvenance, FieldProvenance.source_record_id.is_(None)) == 2


def test_deleting_a_golden_record_still_deletes_its_provenance_and_tokens(
    engine: Engine,
) -> None:
    with Session(engine) as session:
        source_id, record_id = _record(session, "one")
        _derived(session, record_id, source_id, "g1")
        session.execute(insert(GoldenPatient).values(id="g2", resource={}))
        session.execute(insert(GoldenSearchToken).values(golden_id="g2", param="gender", value="m"))
        session.commit()
        session.execute(delete(GoldenPatient).where(GoldenPatient.id == "g1"))
        session.commit()
        assert _count(session, FieldProvenance) == 0
        assert session.scalars(select(GoldenSearchToken.golden_id)).all() == ["g2"]


def test_the_derived_rows_keep_no_foreign_key(engine: Engine) -> None:
    inspector = inspect(engine)
    keys = {
        table: [key["constrained_columns"] for key in inspector.get_foreign_keys(table)]
        for table in ("encounter", "block_key", "field_provenance", "golden_search_token")
    }
    assert keys == {
        "encounter": [],
        "block_key": [],
        "field_provenance": [],
        "golden_search_token": [],
    }


def test_json_documents_are_not_sampled_by_analyze(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as connection:
        targets = dict(
            connection.execute(
                text(
                    "SELECT attname, attstattarget FROM pg_attribute"
                    " WHERE attrelid = 'source_record'::regclass AND attnum > 0"
                )
            ).all()
        )
    assert targets["raw"] == 0 and targets["normalized"] == 0
    assert targets["resource_id"] == -1
