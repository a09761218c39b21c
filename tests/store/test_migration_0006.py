"""Migration 0006 (``source_record.line_digest`` and its partial index) up and down on
both backends: the rows stay, SQLite keeps the digest before the documents, and the
delete triggers of the record and of its source still cascade."""

from __future__ import annotations

from sqlalchemy import Engine, inspect, text

from store import downgrade, make_engine, upgrade
from tests.store.conftest import SOURCE_ROW_SQL


def _columns(engine: Engine) -> list[str]:
    return [column["name"] for column in inspect(engine).get_columns("source_record")]


def _line_index(engine: Engine) -> list[str]:
    return [
        index["name"]
        for index in inspect(engine).get_indexes("source_record")
        if index["name"] == "ix_source_record_line"
    ]


def _insert(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(SOURCE_ROW_SQL))
        for rid in ("p1", "p2"):
            conn.execute(
                text(
                    "INSERT INTO source_record (source_id, resource_type, resource_id, status,"
                    " received_at, updated_at, raw) VALUES (1, 'Patient', :rid, 'active',"
                    " '2026-01-01', '2026-01-01', '{\"id\": \"x\"}')"
                ),
                {"rid": rid},
            )
        conn.execute(
            text(
                "INSERT INTO block_key (key, source_record_id)"
                " SELECT 'k', id FROM source_record WHERE resource_id = 'p1'"
            )
        )


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_0006_up_down_and_up_again_keeps_the_rows_and_the_cascades(empty_db_url: str) -> None:
    sqlite = empty_db_url.startswith("sqlite")
    upgrade(empty_db_url, "0005")
    engine = make_engine(empty_db_url)
    _insert(engine)
    upgrade(empty_db_url)
    engine.dispose()
    columns = _columns(engine)
    assert "line_digest" in columns and _line_index(engine) == ["ix_source_record_line"]
    if sqlite:
        assert columns.index("line_digest") < columns.index("raw")
    with engine.begin() as conn:
        conn.execute(text("UPDATE source_record SET line_digest = 'd1' WHERE resource_id = 'p1'"))
        plan = " ".join(
            str(row[-1])
            for row in conn.execute(
                text(
                    ("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ")
                    + "SELECT resource_id FROM source_record WHERE line_digest IN ('d1', 'd2')"
                )
            )
        )
    assert "ix_source_record_line" in plan or "Seq Scan" in plan  # tiny table on PostgreSQL
    assert _count(engine, "source_record") == 2
    downgrade(empty_db_url, "0005")
    engine.dispose()
    assert "line_digest" not in _columns(engine) and _line_index(engine) == []
    assert _count(engine, "source_record") == 2
    upgrade(empty_db_url)
    engine.dispose()
    # The record's trigger takes its block keys; the source's takes its records.
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM source_record WHERE resource_id = 'p1'"))
    assert (_count(engine, "source_record"), _count(engine, "block_key")) == (1, 0)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM source WHERE id = 1"))
    assert _count(engine, "source_record") == 0
    engine.dispose()
