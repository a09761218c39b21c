"""Fixtures of the store tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import create_pg_database, drop_pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database (no tables) on each backend, for migration tests."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def wal_writer(path: str | Path) -> sqlite3.Connection:
    """A connection (autocommit) to a SQLite file in WAL mode whose log is never
    checkpointed by the writes themselves, so that a test decides when it is."""
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    return writer


#: Source 1 as plain SQL, for migration tests whose models describe the head schema
#: (the columns every migration since 0001 has).
SOURCE_ROW_SQL = (
    "INSERT INTO source (id, name, kind, base_url, auth, resource_types, trust_rank, config,"
    " enabled, created_at, updated_at) VALUES (1, 'ehr', 'ndjson', '/x', '{\"kind\": \"none\"}',"
    " '[\"Patient\"]', 50, '{}', true, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
)
