"""New SQLite databases get SQLITE_PAGE_SIZE pages; existing ones keep theirs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from store.db import SQLITE_PAGE_SIZE, make_engine


def _page_size(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)"))
            connection.execute(text("INSERT INTO t DEFAULT VALUES"))
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            return int(connection.execute(text("PRAGMA page_size")).scalar_one())
    finally:
        engine.dispose()


def test_a_new_database_gets_the_page_size(tmp_path: Path) -> None:
    assert SQLITE_PAGE_SIZE != 4096  # SQLite's default
    assert _page_size(f"sqlite:///{tmp_path / 'new.db'}") == SQLITE_PAGE_SIZE


def test_an_existing_database_keeps_its_page_size(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("PRAGMA page_size=4096")
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    old.commit()
    old.close()
    assert _page_size(f"sqlite:///{path}") == 4096
