"""Migration 0003: ``source_record`` lost its row-by-row key to ``source`` (a trigger on
``source`` does its cascade), gained ``match_features``, and PostgreSQL compresses the JSON
documents with lz4. On SQLite the table is rebuilt, which must not touch the rows of the
tables that reference it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, func, inspect, select, text
from sqlalchemy.orm import Session

from store import downgrade, make_engine, upgrade
from store.models import (
    BlockKey,
    Encounter,
    Link,
    MatchDecision,
    ReviewItem,
    Source,
    SourceRecord,
)
from tests.conftest import create_pg_database, drop_pg_database
from tests.store.conftest import SOURCE_ROW_SQL

#: Rows of an 0002 database that reference ``source_record`` (inserted by plain SQL: the
#: models describe the head schema).
_SEED = (
    SOURCE_ROW_SQL,
    "INSERT INTO source_record (id, source_id, resource_type, resource_id, status,"
    " received_at, updated_at) VALUES (10, 1, 'Patient', 'p1', 'active', CURRENT_TIMESTAMP,"
    " CURRENT_TIMESTAMP), (11, 1, 'Patient', 'p2', 'active', CURRENT_TIMESTAMP,"
    " CURRENT_TIMESTAMP), (12, 1, 'Encounter', 'e1', 'active', CURRENT_TIMESTAMP,"
    " CURRENT_TIMESTAMP)",
    "INSERT INTO golden_patient (id, version, resource, status, created_at, last_updated)"
    " VALUES ('g1', 1, '{}', 'active', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO link (source_record_id, golden_id, grade, method, flagged, explanation,"
    " created_at, updated_at) VALUES (10, 'g1', 'certain', 'AUTO', false, '{}',"
    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP), (11, 'g1', 'probable', 'AUTO', false, '{}',"
    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
    "INSERT INTO review_item (kind, status, source_record_id, golden_id, evidence,"
    " created_at) VALUES ('possible-match', 'open', 11, 'g1', '{}', CURRENT_TIMESTAMP)",
    "INSERT INTO match_decision (record_a_id, record_b_id, decision, actor, at)"
    " VALUES (10, 11, 'match', 'steward', CURRENT_TIMESTAMP)",
    "INSERT INTO block_key (key, source_record_id) VALUES ('k', 10)",
    "INSERT INTO encounter (source_record_id, source_id, golden_id, resource, last_updated)"
    " VALUES (12, 1, 'g1', '{}', CURRENT_TIMESTAMP)",
)


@pytest.fixture(params=["sqlite", "postgresql"])
def url_at_0002(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'at0002.db'}"
        upgrade(url, "0002")
        yield url
        return
    url = create_pg_database()
    upgrade(url, "0002")
    yield url
    drop_pg_database(url)


def _counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (SourceRecord, Link, ReviewItem, MatchDecision, BlockKey, Encounter)
        }


def _source_keys(engine: Engine) -> list[list[str]]:
    return [
        key["constrained_columns"]
        for key in inspect(engine).get_foreign_keys("source_record")
        if key["referred_table"] == "source"
    ]


def test_upgrade_keeps_every_row_that_references_a_record(url_at_0002: str) -> None:
    engine = make_engine(url_at_0002)
    with engine.begin() as connection:
        for statement in _SEED:
            connection.exec_driver_sql(statement)
    before = _counts(engine)
    assert before == {
        "source_record": 3,
        "link": 2,
        "review_item": 1,
        "match_decision": 1,
        "block_key": 1,
        "encounter": 1,
    }
    assert _source_keys(engine) == [["source_id"]]

    upgrade(url_at_0002)
    engine.dispose()
    engine = make_engine(url_at_0002)
    assert _counts(engine) == before
    assert _source_keys(engine) == []
    assert "match_features" in {c["name"] for c in inspect(engine).get_columns("source_record")}
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1

    # The record's trigger survived SQLite's rebuild, and the source's trigger cascades.
    with Session(engine) as session:
        session.execute(delete(SourceRecord).where(SourceRecord.id == 10))
        session.commit()
        assert session.scalar(select(func.count()).select_from(BlockKey)) == 0
        session.execute(delete(Source).where(Source.id == 1))
        session.commit()
    assert set(_counts(engine).values()) == {0}

    downgrade(url_at_0002, "0002")
    engine.dispose()
    engine = make_engine(url_at_0002)
    assert _source_keys(engine) == [["source_id"]]
    engine.dispose()


def test_a_record_of_an_unknown_source_is_not_refused_but_goes_with_its_source(
    engine: Engine,
) -> None:
    """What the key checked at every insert is the application's to keep (records are
    written by their source's sync); what it did on delete is still done."""
    with Session(engine) as session:
        source = Source(name="one", kind="ndjson", base_url="/x")
        session.add(source)
        session.flush()
        session.add_all(
            [
                SourceRecord(source_id=source.id, resource_type="Patient", resource_id="p1"),
                SourceRecord(source_id=source.id + 1000, resource_type="Patient", resource_id="p"),
            ]
        )
        session.commit()
        session.execute(delete(Source).where(Source.id == source.id))
        session.commit()
        assert session.scalars(select(SourceRecord.source_id)).all() == [source.id + 1000]


def test_postgresql_compresses_the_json_documents_with_lz4(pg_url: str) -> None:
    engine = make_engine(pg_url)
    with engine.connect() as connection:
        available = connection.execute(
            text(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
                " WHERE name = 'default_toast_compression'"
            )
        ).scalar()
        methods = dict(
            connection.execute(
                text(
                    "SELECT attrelid::regclass::text || '.' || attname, attcompression"
                    " FROM pg_attribute WHERE attname IN ('raw', 'normalized', 'resource')"
                    " AND attrelid IN ('source_record'::regclass, 'golden_patient'::regclass)"
                )
            ).all()
        )
    engine.dispose()
    expected = "l" if available else ""
    assert methods == {
        "source_record.raw": expected,
        "source_record.normalized": expected,
        "golden_patient.resource": expected,
    }


def test_sqlite_stores_the_small_columns_before_the_documents(sqlite_url: str) -> None:
    """A column stored after ``raw``/``normalized`` is read by walking their overflow
    pages; every column the pipeline and the MPI read per record comes first."""
    engine = make_engine(sqlite_url)
    with engine.connect() as connection:
        columns = [
            row[0]
            for row in connection.exec_driver_sql(
                "SELECT name FROM pragma_table_info('source_record') ORDER BY cid"
            )
        ]
    engine.dispose()
    documents = {"raw", "normalized", "error"}
    first_document = min(columns.index(name) for name in documents)
    assert set(columns[first_document:]) == documents
