"""Planner statistics follow a bulk load on PostgreSQL (and nothing runs on SQLite)."""

from __future__ import annotations

from sqlalchemy import Engine, insert, text
from sqlalchemy.orm import Session

from store.db import ANALYZE_MIN_CHANGES, SYNC_TABLES, StatisticsRefresher
from store.models import Source, SourceRecord


def test_analyze_runs_once_enough_rows_were_written(engine: Engine) -> None:
    postgres = engine.dialect.name == "postgresql"
    rows = ANALYZE_MIN_CHANGES + 1
    with Session(engine) as session:
        if postgres:  # earlier tests' changes are counted until an ANALYZE
            for table in SYNC_TABLES:
                session.execute(text(f"ANALYZE {table}"))
            session.commit()
            before = _analyzed(session)
        source_id = session.execute(
            insert(Source)
            .values(name="stats", kind="ndjson", base_url="/tmp/x")
            .returning(Source.id)
        ).scalar_one()
        session.execute(
            insert(SourceRecord),
            [
                {"source_id": source_id, "resource_type": "Patient", "resource_id": f"p{i}"}
                for i in range(rows)
            ],
        )
        if postgres:  # the change counters, without waiting for the next report
            session.execute(text("SELECT pg_stat_force_next_flush()"))
        session.commit()
        refresher = StatisticsRefresher(every_rows=rows)
        assert refresher.wrote(session, rows - 1) is False
        assert refresher.wrote(session, 1) is postgres
        assert refresher.pending == (0 if postgres else rows)
        if postgres:
            tuples = session.scalar(
                text("SELECT reltuples FROM pg_class WHERE relname = 'source_record'")
            )
            assert tuples == rows
            # Only the table that changed was analyzed again.
            after = _analyzed(session)
            assert {t for t in SYNC_TABLES if after[t] != before[t]} == {"source_record"}


def _analyzed(session: Session) -> dict[str, int]:
    """How many times each table was analyzed (a fresh statistics snapshot)."""
    session.commit()
    counts = dict(
        session.execute(
            text(
                "SELECT relname, analyze_count FROM pg_stat_user_tables"
                " WHERE relname = ANY(:tables)"
            ),
            {"tables": list(SYNC_TABLES)},
        ).all()
    )
    session.commit()
    return counts


def test_postgresql_plans_every_execution_with_its_values(engine: Engine) -> None:
    """A prepared statement keeps custom plans (store.db.PG_OPTIONS): a generic one, made
    without the id array, could keep a first load's empty-table plan for good."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as connection:
        assert connection.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
