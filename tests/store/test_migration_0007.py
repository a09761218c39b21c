"""Migration 0007 (``ix_field_provenance_record``) up and down on both backends: the
record's delete trigger still sets its provenance rows' record to null, and on SQLite
the statement it runs reads the index, not the whole table."""

from __future__ import annotations

from sqlalchemy import Engine, inspect, text

from store import downgrade, make_engine, upgrade
from tests.store.conftest import SOURCE_ROW_SQL

INDEX = "ix_field_provenance_record"


def _indexes(engine: Engine) -> set[str]:
    return {str(index["name"]) for index in inspect(engine).get_indexes("field_provenance")}


def _insert(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(SOURCE_ROW_SQL))
        for record_id in (1, 2):
            conn.execute(
                text(
                    "INSERT INTO source_record (id, source_id, resource_type, resource_id,"
                    " status, received_at, updated_at, raw) VALUES (:id, 1, 'Patient', :rid,"
                    " 'active', '2026-01-01', '2026-01-01', '{}')"
                ),
                {"id": record_id, "rid": f"p{record_id}"},
            )
            conn.execute(
                text(
                    "INSERT INTO field_provenance (golden_id, field, value, source_record_id,"
                    " rule) VALUES ('g1', :field, '\"x\"', :id, 'trust')"
                ),
                {"field": f"f{record_id}", "id": record_id},
            )


def _provenance_records(engine: Engine) -> list[int | None]:
    with engine.connect() as conn:
        return [
            row[0]
            for row in conn.execute(
                text("SELECT source_record_id FROM field_provenance ORDER BY field")
            )
        ]


def test_0007_up_down_and_the_trigger_uses_the_index(empty_db_url: str) -> None:
    sqlite = empty_db_url.startswith("sqlite")
    upgrade(empty_db_url, "0006")
    engine = make_engine(empty_db_url)
    assert INDEX not in _indexes(engine)
    _insert(engine)
    upgrade(empty_db_url)
    engine.dispose()
    assert INDEX in _indexes(engine)
    if sqlite:
        with engine.connect() as conn:
            plan = " ".join(
                str(row[-1])
                for row in conn.execute(
                    text(
                        "EXPLAIN QUERY PLAN UPDATE field_provenance SET source_record_id = NULL"
                        " WHERE source_record_id = 1"
                    )
                )
            )
        assert INDEX in plan
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM source_record WHERE id = 1"))
    assert _provenance_records(engine) == [None, 2]
    downgrade(empty_db_url, "0006")
    engine.dispose()
    assert INDEX not in _indexes(engine)
    assert _provenance_records(engine) == [None, 2]
    upgrade(empty_db_url)
    engine.dispose()
    assert INDEX in _indexes(engine)
    engine.dispose()
