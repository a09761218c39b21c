"""The background checkpointer resets a large SQLite WAL (TRUNCATE), and falls back to a
PASSIVE checkpoint when a writer holds the lock."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from store import db
from store.db import WalCheckpointer
from tests.store.conftest import wal_writer


@pytest.fixture
def wal_db(tmp_path: Path) -> Iterator[tuple[str, sqlite3.Connection]]:
    """A WAL database holding ~1 MB of log (no automatic checkpoint), and its writer."""
    path = str(tmp_path / "wal.db")
    writer = wal_writer(path)
    writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    writer.execute("BEGIN")
    writer.executemany("INSERT INTO t (body) VALUES (?)", [("x" * 1000,) for _ in range(1000)])
    writer.execute("COMMIT")
    yield path, writer
    writer.close()


def _wal_bytes(path: str) -> int:
    return os.path.getsize(f"{path}-wal")


def _checkpointer(path: str) -> WalCheckpointer:
    checkpointer = WalCheckpointer(path, interval_s=3600)
    checkpointer.stop()
    return checkpointer


def test_small_log_gets_a_passive_checkpoint(
    wal_db: tuple[str, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = wal_db
    before = _wal_bytes(path)
    monkeypatch.setattr(db, "WAL_TRUNCATE_BYTES", before + 1)
    checkpointer = _checkpointer(path)
    checkpointer.checkpoint()
    assert checkpointer.checkpoints == 1
    assert checkpointer.truncations == 0
    assert _wal_bytes(path) == before  # copied into the database, never rewound


def test_large_log_is_truncated(
    wal_db: tuple[str, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, writer = wal_db
    assert _wal_bytes(path) > 1_000_000
    monkeypatch.setattr(db, "WAL_TRUNCATE_BYTES", 64 * 1024)
    checkpointer = _checkpointer(path)
    checkpointer.checkpoint()
    assert (checkpointer.checkpoints, checkpointer.truncations) == (1, 1)
    assert _wal_bytes(path) == 0
    assert writer.execute("SELECT count(*) FROM t").fetchone() == (1000,)
    checkpointer.checkpoint()  # an empty log: nothing to do
    assert checkpointer.checkpoints == 1


def test_truncate_waits_briefly_for_a_busy_writer(
    wal_db: tuple[str, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, writer = wal_db
    monkeypatch.setattr(db, "WAL_TRUNCATE_BYTES", 64 * 1024)
    monkeypatch.setattr(db, "WAL_TRUNCATE_BUSY_MS", 200)
    checkpointer = _checkpointer(path)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t (body) VALUES ('y')")
    started = time.monotonic()
    checkpointer.checkpoint()
    waited = time.monotonic() - started
    writer.execute("COMMIT")
    assert 0.15 <= waited < 5
    assert (checkpointer.checkpoints, checkpointer.truncations) == (1, 0)
    assert _wal_bytes(path) > 0
    checkpointer.checkpoint()  # the writer is gone: now the log is reset
    assert checkpointer.truncations == 1
    assert _wal_bytes(path) == 0
    assert writer.execute("SELECT count(*) FROM t").fetchone() == (1001,)
