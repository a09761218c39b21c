"""The statistics refresher analyzes the keyed sync tables from a smaller sample
(store.db.KEYED_TABLES_STATISTICS_TARGET) and the MPI's tables from the default one."""

from __future__ import annotations

from sqlalchemy import Engine, insert, text
from sqlalchemy.orm import Session

from store.db import KEYED_TABLES_STATISTICS_TARGET, SYNC_TABLES, StatisticsRefresher
from store.models import BlockKey, Source, SourceRecord

#: More distinct values than a histogram of the default target (100) has bounds.
ROWS = 3000


def test_keyed_tables_are_analyzed_from_a_smaller_sample(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        return
    with Session(engine) as session:
        for table in SYNC_TABLES:  # earlier tests' changes are counted until an ANALYZE
            session.execute(text(f"ANALYZE {table}"))
        session.commit()
        source_id = session.execute(
            insert(Source)
            .values(name="sample", kind="ndjson", base_url="/tmp/x")
            .returning(Source.id)
        ).scalar_one()
        session.execute(
            insert(SourceRecord),
            [
                {"source_id": source_id, "resource_type": "Encounter", "resource_id": f"e{i}"}
                for i in range(ROWS)
            ],
        )
        session.execute(
            insert(BlockKey), [{"key": f"k{i}", "source_record_id": i} for i in range(ROWS)]
        )
        session.execute(text("SELECT pg_stat_force_next_flush()"))
        session.commit()
        assert StatisticsRefresher(every_rows=ROWS).wrote(session, ROWS) is True
        bounds: dict[str, int] = dict(
            session.execute(
                text(
                    "SELECT tablename, cardinality(histogram_bounds::text::text[]) FROM pg_stats"
                    " WHERE (tablename, attname) IN (('source_record', 'resource_id'),"
                    " ('block_key', 'key'))"
                )
            ).all()
        )
        # The setting was the ANALYZE's own: the session keeps its default.
        assert session.execute(text("SHOW default_statistics_target")).scalar() == "100"
    assert bounds == {"source_record": KEYED_TABLES_STATISTICS_TARGET + 1, "block_key": 101}
