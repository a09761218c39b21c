"""The background checkpointer of a SQLite database runs right after each commit, so
the next writer restarts the log; it rewinds the log by force only when the log in use,
not the WAL file, is long; the engines of one database file share it."""

from __future__ import annotations

import gc
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from store import db
from store.db import WalCheckpointer, make_engine
from tests.store.conftest import wal_writer

#: Rows of ~1 KB written per transaction: ~1 MB of log.
ROWS = 1000
#: How long a test waits for the background thread.
WAIT_S = 10.0


def _wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def _wal_bytes(path: Path) -> int:
    return os.path.getsize(f"{path}-wal")


def test_each_commit_is_checkpointed_and_the_log_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "WAL_CHECKPOINT_INTERVAL_S", 3600)  # no timer: commits only
    path = tmp_path / "commits.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)"))
        checkpointer = db._checkpointers[str(path)]
        sizes = []
        for _ in range(5):
            done = checkpointer.checkpoints
            with engine.begin() as connection:
                connection.execute(
                    text("INSERT INTO t (body) VALUES (:body)"), [{"body": "x" * 1000}] * ROWS
                )
            assert _wait_for(lambda: checkpointer.checkpoints > done), "commit not checkpointed"
            sizes.append(_wal_bytes(path))
        # Every transaction found the log copied and started it again: ~1 MB, not 5.
        assert max(sizes) < 2 * ROWS * 1024 + 512 * 1024
        assert checkpointer.truncations == 0
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 5 * ROWS
    finally:
        engine.dispose()


def test_a_restarted_log_in_a_large_file_is_not_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "restart.db")
    writer = wal_writer(path)
    try:
        writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
        writer.execute("BEGIN")
        writer.executemany("INSERT INTO t (body) VALUES (?)", [("x" * 1000,)] * ROWS)
        writer.execute("COMMIT")
        checkpointer = WalCheckpointer(path, interval_s=3600)
        checkpointer.stop()
        monkeypatch.setattr(db, "WAL_TRUNCATE_BYTES", 2 * _wal_bytes(Path(path)))
        checkpointer.checkpoint()  # copies the whole log (PASSIVE)
        writer.execute("INSERT INTO t (body) VALUES ('y')")  # restarts it: one frame or two
        large_file = _wal_bytes(Path(path))
        monkeypatch.setattr(db, "WAL_TRUNCATE_BYTES", 64 * 1024)
        assert large_file > db.WAL_TRUNCATE_BYTES
        checkpointer.checkpoint()
        assert (checkpointer.checkpoints, checkpointer.truncations) == (2, 0)
        assert _wal_bytes(Path(path)) == large_file  # reused, not truncated
        assert writer.execute("SELECT count(*) FROM t").fetchone() == (ROWS + 1,)
    finally:
        writer.close()


def test_the_engines_of_one_file_share_one_checkpointer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = make_engine(url), make_engine(url)
    checkpointer = db._checkpointers[str(tmp_path / "shared.db")]
    assert checkpointer.engines == 2
    other = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    assert db._checkpointers[str(tmp_path / "other.db")] is not checkpointer
    del first
    gc.collect()
    assert checkpointer.engines == 1
    assert not checkpointer._stop.is_set()
    del second
    gc.collect()
    assert checkpointer._stop.is_set()
    assert str(tmp_path / "shared.db") not in db._checkpointers
    other.dispose()


def test_a_checkpoint_never_creates_a_database_that_is_gone(tmp_path: Path) -> None:
    # The database file was removed (its folder being deleted) while its log was still
    # there: a checkpoint fails instead of making the file again, empty, in that folder.
    path = tmp_path / "gone.db"
    Path(f"{path}-wal").write_bytes(b"\0" * 4096)
    checkpointer = WalCheckpointer(str(path), interval_s=3600)
    checkpointer.stop()
    with pytest.raises(sqlite3.OperationalError):
        checkpointer.checkpoint()
    assert not path.exists()
    assert checkpointer.checkpoints == 0
    # A path with characters a URI escapes still opens.
    odd = tmp_path / "a dir#1" / "odd?name.db"
    odd.parent.mkdir()
    writer = wal_writer(odd)
    try:
        writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        writer.execute("INSERT INTO t DEFAULT VALUES")
        other = WalCheckpointer(str(odd), interval_s=3600)
        other.stop()
        other.checkpoint()
        assert other.checkpoints == 1
    finally:
        writer.close()


def test_stop_checkpointers_ends_their_threads_before_a_folder_is_removed(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    engine = make_engine(f"sqlite:///{folder / 'a.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    running = db._checkpointers[str(folder / "a.db")]
    assert running._thread.is_alive()
    engine.dispose()
    db.stop_checkpointers()
    assert not running._thread.is_alive()
    assert str(folder / "a.db") not in db._checkpointers
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()  # nothing made again behind the removal
    again = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    with again.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    assert db._checkpointers[str(tmp_path / "b.db")]._thread.is_alive()
    again.dispose()
