"""A refresher's first look at the planner statistics comes after a first load's first
pages (store.db.ANALYZE_FIRST_ROWS), not after ANALYZE_EVERY_ROWS: until then the new
tables had no column statistics and the MPI's reads were planned from defaults."""

from __future__ import annotations

from sqlalchemy import Engine, insert, text
from sqlalchemy.orm import Session

from store.db import ANALYZE_EVERY_ROWS, ANALYZE_FIRST_ROWS, StatisticsRefresher
from store.models import Source, SourceRecord


def test_the_first_look_comes_early_and_the_next_ones_at_the_usual_pace(engine: Engine) -> None:
    assert ANALYZE_FIRST_ROWS < ANALYZE_EVERY_ROWS
    postgres = engine.dialect.name == "postgresql"
    first, every = 1500, 6000
    with Session(engine) as session:
        source_id = session.execute(
            insert(Source)
            .values(name="first-look", kind="ndjson", base_url="/tmp/x")
            .returning(Source.id)
        ).scalar_one()
        session.execute(
            insert(SourceRecord),
            [
                {"source_id": source_id, "resource_type": "Patient", "resource_id": f"p{i}"}
                for i in range(first + 1)
            ],
        )
        if postgres:  # the change counters, without waiting for the next report
            session.execute(text("SELECT pg_stat_force_next_flush()"))
        session.commit()
        refresher = StatisticsRefresher(every_rows=every, first_rows=first)
        assert refresher.wrote(session, first - 1) is False
        assert refresher.wrote(session, 1) is postgres
        if not postgres:
            return
        # The records have statistics now: the planner knows how many there are.
        tuples = session.scalar(
            text("SELECT reltuples FROM pg_class WHERE relname = 'source_record'")
        )
        assert tuples == first + 1
        assert refresher.wrote(session, every - 1) is False
        assert refresher.wrote(session, 1) is True


def test_the_default_refresher_looks_first_after_the_first_rows() -> None:
    refresher = StatisticsRefresher()
    assert refresher.due == ANALYZE_FIRST_ROWS
    assert StatisticsRefresher(every_rows=100).due == 100
