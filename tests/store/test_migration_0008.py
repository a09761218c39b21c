"""Migration 0008 (``source.removing_since``) up and down on both backends: the source
keeps its row and its delete trigger (a removed source still takes its records)."""

from __future__ import annotations

from sqlalchemy import Engine, inspect, text

from store import downgrade, make_engine, upgrade
from tests.store.conftest import SOURCE_ROW_SQL


def _columns(engine: Engine) -> list[str]:
    return [column["name"] for column in inspect(engine).get_columns("source")]


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_0008_up_down_keeps_the_source_and_its_trigger(empty_db_url: str) -> None:
    upgrade(empty_db_url, "0007")
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(text(SOURCE_ROW_SQL))
        conn.execute(
            text(
                "INSERT INTO source_record (source_id, resource_type, resource_id, status,"
                " received_at, updated_at, raw) VALUES (1, 'Patient', 'p1', 'active',"
                " '2026-01-01', '2026-01-01', '{}')"
            )
        )
    upgrade(empty_db_url)
    engine.dispose()
    assert "removing_since" in _columns(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE source SET removing_since = CURRENT_TIMESTAMP WHERE id = 1"))
    downgrade(empty_db_url, "0007")
    engine.dispose()
    assert "removing_since" not in _columns(engine)
    assert _count(engine, "source") == 1
    with engine.begin() as conn:  # the source's delete trigger survived the downgrade
        conn.execute(text("DELETE FROM source WHERE id = 1"))
    assert _count(engine, "source_record") == 0
    upgrade(empty_db_url)
    engine.dispose()
    assert "removing_since" in _columns(engine)
    engine.dispose()
