"""Migration 0005 (PostgreSQL: ``block_key``'s key index carries the record) up and down
on both backends, and the statistics refresher's vacuums, which let the MPI's block-key
read skip the heap."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import Session

from mpi.reads import Reads
from store import downgrade, make_engine, upgrade
from store.bulk import BulkWriter
from store.db import VACUUM_TABLES, StatisticsRefresher
from tests.conftest import emptied_engine


def _key_index(engine: Engine) -> tuple[list[str], list[str]]:
    """Key columns and included columns of ``ix_block_key_key``."""
    (index,) = [
        i for i in inspect(engine).get_indexes("block_key") if i["name"] == "ix_block_key_key"
    ]
    included = index.get("dialect_options", {}).get("postgresql_include", [])
    return list(index["column_names"]), list(included)


def test_0005_up_down_and_up_again_keeps_the_rows(empty_db_url: str) -> None:
    postgres = empty_db_url.startswith("postgresql")
    upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    with Session(engine) as session:
        BulkWriter(session).insert(
            "block_key", ("key", "source_record_id"), [("a", 1), ("a", 2), ("b", 3)]
        )
        session.commit()
    assert _key_index(engine) == (["key"], ["source_record_id"] if postgres else [])
    downgrade(empty_db_url, "0004")
    engine.dispose()
    assert _key_index(engine) == (["key"], [])
    upgrade(empty_db_url)
    engine.dispose()
    assert _key_index(engine) == (["key"], ["source_record_id"] if postgres else [])
    with Session(engine) as session:
        rows = Reads(session).block_members(["a", "b", "c"], 5)
    assert sorted(rows) == [("a", 2, 1), ("a", 2, 2), ("b", 1, 3)]
    engine.dispose()


def _heap_fetches(session: Session, keys: list[str]) -> int:
    """Heap fetches of the block-key read of ``keys`` (EXPLAIN ANALYZE)."""
    plan = session.execute(
        text(
            "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY OFF) SELECT count(*), "
            "array_agg(source_record_id) FROM block_key WHERE key = :key"
        ),
        {"key": keys[0]},
    ).scalars()
    fetched = [line for line in plan if "Heap Fetches" in line]
    assert fetched, "not an index-only scan"
    return sum(int(line.rsplit(":", 1)[1]) for line in fetched)


def test_the_refresher_vacuums_so_that_key_reads_skip_the_heap(engine: Engine) -> None:
    postgres = engine.dialect.name == "postgresql"
    every = 500
    with Session(engine) as session:
        BulkWriter(session).insert(
            "block_key",
            ("key", "source_record_id"),
            [(f"k{i % 40}", i) for i in range(4000)],
        )
        session.commit()
        if postgres:  # the plan of a key lookup on a table this size, as after ANALYZE
            session.execute(text("ANALYZE block_key"))
            session.execute(text("SET LOCAL enable_seqscan = off"))
            session.execute(text("SET LOCAL enable_bitmapscan = off"))
            assert _heap_fetches(session, ["k7"]) == 100
            session.commit()
        refresher = StatisticsRefresher(every_rows=10**9, vacuum_every_rows=every)
        refresher.wrote(session, every - 1)
        if postgres:
            session.execute(text("SET LOCAL enable_seqscan = off"))
            session.execute(text("SET LOCAL enable_bitmapscan = off"))
            assert _heap_fetches(session, ["k7"]) == 100  # not vacuumed yet
            session.commit()
        refresher.wrote(session, 1)
        assert refresher.unvacuumed == 0
        if postgres:
            session.execute(text("SET LOCAL enable_seqscan = off"))
            session.execute(text("SET LOCAL enable_bitmapscan = off"))
            assert _heap_fetches(session, ["k7"]) == 0
            session.commit()
        rows = Reads(session).block_members(["k7", "k8"], 200)
        assert sorted(rows) == sorted(
            [("k7", 100, i) for i in range(7, 4000, 40)]
            + [("k8", 100, i) for i in range(8, 4000, 40)]
        )
    assert VACUUM_TABLES == ("block_key",)


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """PostgreSQL only: nothing is vacuumed on SQLite."""
    yield from emptied_engine(pg_url)


def test_a_vacuum_skips_a_table_another_session_holds(pg_engine: Engine) -> None:
    engine = pg_engine
    with engine.connect() as holder, Session(engine) as session:
        # As another sync's refresher vacuuming or analyzing it does.
        holder.execute(text("LOCK TABLE block_key IN SHARE UPDATE EXCLUSIVE MODE"))
        done = threading.Event()

        def vacuum() -> None:
            StatisticsRefresher().vacuum(session)
            done.set()

        worker = threading.Thread(target=vacuum, daemon=True)
        worker.start()
        finished = done.wait(10)
        holder.rollback()  # lets a waiting vacuum finish whatever happened
        worker.join(10)
        assert finished, "the vacuum waited for the other session's lock"
