"""The sync's statistics refresher looks in a thread of its own (``background=True``):
the caller's transaction goes on, a look that comes due while the last one runs waits
for the next page, a table another session holds is skipped, and a failed look is
logged, not raised."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, insert, text
from sqlalchemy.orm import Session

import sync.runner
from store.db import SYNC_TABLES, StatisticsRefresher
from store.models import BlockKey, Source, SourceRecord
from sync import wait_for_statistics
from tests.conftest import emptied_engine

ROWS = 1500


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """PostgreSQL only: SQLite plans without statistics, nothing runs there."""
    yield from emptied_engine(pg_url)


def _write_records(session: Session, rows: int = ROWS) -> None:
    source_id = session.execute(
        insert(Source).values(name="bg", kind="ndjson", base_url="/tmp/x").returning(Source.id)
    ).scalar_one()
    session.execute(
        insert(SourceRecord),
        [
            {"source_id": source_id, "resource_type": "Patient", "resource_id": f"p{i}"}
            for i in range(rows)
        ],
    )
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_stat_force_next_flush()"))
    session.commit()


def _analyze_all(session: Session) -> None:
    """Earlier tests' changes are counted until an ANALYZE."""
    for table in SYNC_TABLES:
        session.execute(text(f"ANALYZE {table}"))
    session.commit()


def _tuples(session: Session, table: str) -> float:
    session.commit()
    return float(session.scalar(text(f"SELECT reltuples FROM pg_class WHERE relname = '{table}'")))


def test_a_background_look_analyzes_outside_the_callers_transaction(engine: Engine) -> None:
    postgres = engine.dialect.name == "postgresql"
    with Session(engine) as session:
        if postgres:
            _analyze_all(session)
        _write_records(session)
        refresher = StatisticsRefresher(every_rows=ROWS, background=True)
        assert refresher.wrote(session, ROWS) is postgres
        refresher.wait()
        if not postgres:
            assert refresher.pending == ROWS
            return
        assert refresher.pending == 0
        assert _tuples(session, "source_record") == ROWS
        # The session's own transaction was not touched, and the look's connection went
        # back to the pool with the default statistics target.
        assert session.execute(text("SHOW default_statistics_target")).scalar() == "100"
        connections = [engine.connect() for _ in range(3)]
        try:
            for conn in connections:
                assert conn.exec_driver_sql("SHOW default_statistics_target").scalar() == "100"
        finally:
            for conn in connections:
                conn.close()


def test_a_look_due_while_the_last_one_runs_waits_for_the_next_page(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    looks: list[int] = []

    def slow_analyze(conn: Connection, *, autocommit: bool = False) -> None:
        looks.append(1)
        release.wait(10)

    monkeypatch.setattr(StatisticsRefresher, "_analyze", staticmethod(slow_analyze))
    with Session(pg_engine) as session:
        refresher = StatisticsRefresher(every_rows=100, first_rows=100, background=True)
        assert refresher.wrote(session, 100) is True
        # Due again while the first look runs: not stacked, the rows are kept.
        assert refresher.wrote(session, 100) is False
        assert refresher.pending == 100
        release.set()
        refresher.wait()
        assert refresher.wrote(session, 1) is True
        refresher.wait()
    assert len(looks) == 2


def test_a_background_look_skips_a_table_another_session_holds(pg_engine: Engine) -> None:
    engine = pg_engine
    with Session(engine) as session:
        _analyze_all(session)
        _write_records(session)  # source_record changed
        session.execute(
            insert(BlockKey), [{"key": f"k{i}", "source_record_id": i} for i in range(ROWS)]
        )
        session.execute(text("SELECT pg_stat_force_next_flush()"))
        session.commit()
        records_before = _analyze_count(session, "source_record")
        # Another session (a concurrent sync's refresher, say) holds source_record.
        with engine.connect() as holder:
            holder.execute(text("LOCK TABLE source_record IN SHARE UPDATE EXCLUSIVE MODE"))
            refresher = StatisticsRefresher(every_rows=ROWS, background=True)
            assert refresher.wrote(session, ROWS) is True
            look = refresher._look
            assert look is not None
            look.join(10)
            finished = not look.is_alive()
            holder.rollback()
        refresher.wait()
        assert finished, "the look waited for the other session's lock"
        assert _tuples(session, "block_key") == ROWS
        assert _analyze_count(session, "source_record") == records_before


def _analyze_count(session: Session, table: str) -> int:
    session.execute(text("SELECT pg_stat_clear_snapshot()"))
    count = session.scalar(
        text("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = :t"), {"t": table}
    )
    session.commit()
    return int(count)


def test_a_failed_look_is_logged_and_the_next_one_runs(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def failing(conn: Connection, *, autocommit: bool = False) -> None:
        calls.append(1)
        conn.exec_driver_sql("SELECT * FROM no_such_table")

    monkeypatch.setattr(StatisticsRefresher, "_analyze", staticmethod(failing))
    with Session(pg_engine) as session, caplog.at_level(logging.WARNING, logger="store.db"):
        refresher = StatisticsRefresher(every_rows=10, first_rows=10, background=True)
        assert refresher.wrote(session, 10) is True
        refresher.wait()
        assert refresher.wrote(session, 10) is True
        refresher.wait()
    assert len(calls) == 2
    warnings = [r for r in caplog.records if r.message == "planner statistics not refreshed"]
    assert len(warnings) == 2
    assert all(getattr(r, "error", None) == "ProgrammingError" for r in warnings)


def test_wait_for_statistics_waits_for_the_syncs_look(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sync.runner._statistics.background  # the sync's looks run in the background
    refresher = StatisticsRefresher(background=True)
    release = threading.Event()
    look = threading.Thread(target=release.wait, args=(10,), daemon=True)
    look.start()
    refresher._look = look
    monkeypatch.setattr(sync.runner, "_statistics", refresher)
    threading.Timer(0.05, release.set).start()
    wait_for_statistics()
    assert not look.is_alive()
