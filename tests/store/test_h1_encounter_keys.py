"""Migration 0002: the encounter's derived columns lost their foreign keys, not the
guarantees a user relies on (deleting a source or a record still deletes its encounters)."""

from __future__ import annotations

from sqlalchemy import Engine, delete, func, insert, inspect, select, text
from sqlalchemy.orm import Session

from store.models import Encounter, Source, SourceRecord


def _source_with_encounter(session: Session, name: str) -> tuple[int, int]:
    source_id = session.execute(
        insert(Source).values(name=name, kind="ndjson", base_url="/tmp/x").returning(Source.id)
    ).scalar_one()
    record_id = session.execute(
        insert(SourceRecord)
        .values(source_id=source_id, resource_type="Encounter", resource_id="e1")
        .returning(SourceRecord.id)
    ).scalar_one()
    session.execute(
        insert(Encounter).values(
            source_record_id=record_id, source_id=source_id, golden_id=None, resource={}
        )
    )
    return source_id, record_id


def test_deleting_a_source_or_a_record_still_deletes_its_encounters(engine: Engine) -> None:
    with Session(engine) as session:
        first, _ = _source_with_encounter(session, "one")
        _, record = _source_with_encounter(session, "two")
        session.commit()
        session.execute(delete(Source).where(Source.id == first))
        session.execute(delete(SourceRecord).where(SourceRecord.id == record))
        session.commit()
        assert session.scalar(select(func.count()).select_from(Encounter)) == 0


def test_encounter_keeps_only_the_key_to_its_record(engine: Engine) -> None:
    keys = inspect(engine).get_foreign_keys("encounter")
    assert [(key["constrained_columns"], key["referred_table"]) for key in keys] == [
        (["source_record_id"], "source_record")
    ]


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
