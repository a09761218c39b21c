from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from store import (
    ALL_TABLES,
    Base,
    SchemaNotAtHeadError,
    check_schema_at_head,
    downgrade,
    make_engine,
    upgrade,
)


def test_empty_to_head_and_back_to_empty(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    with pytest.raises(SchemaNotAtHeadError, match="askonce db upgrade"):
        check_schema_at_head(engine)

    upgrade(empty_db_url)
    check_schema_at_head(engine)
    assert set(ALL_TABLES) <= set(inspect(engine).get_table_names())

    downgrade(empty_db_url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    with pytest.raises(SchemaNotAtHeadError):
        check_schema_at_head(engine)

    upgrade(empty_db_url)  # and up again: the downgrade left nothing behind
    check_schema_at_head(engine)
    engine.dispose()


# The Encounter search's GIN indexes exist on PostgreSQL only (migration 0015).
@pytest.mark.filterwarnings("ignore:autogenerate skipping metadata-specified expression-based")
def test_models_and_migrations_agree(db_url: str) -> None:
    """The migrations create exactly what the models describe."""
    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_lookup_indexes_exist(db_url: str) -> None:
    engine = make_engine(db_url)
    insp = inspect(engine)
    indexed = {
        table: {tuple(ix["column_names"]) for ix in insp.get_indexes(table)}
        | {tuple(uq["column_names"]) for uq in insp.get_unique_constraints(table)}
        for table in ("source_record", "block_key", "link", "outbox", "encounter")
    }
    engine.dispose()
    assert ("source_id", "resource_type", "resource_id") in indexed["source_record"]
    assert ("key",) in indexed["block_key"]
    assert ("golden_id",) in indexed["link"]
    assert ("source_record_id",) in indexed["link"]
    assert ("next_attempt_at", "id") in indexed["outbox"]
    assert ("golden_id", "period_start") in indexed["encounter"]
