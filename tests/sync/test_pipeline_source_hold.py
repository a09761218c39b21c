"""A page holds its source row: with no foreign key from ``source_record`` to ``source``
(migration 0003), a source deleted during a page must wait for it, and a page of a
source that is gone must write nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from store import make_session_factory
from store.models import SourceRecord
from sync import ingest_page
from sync.pipeline import UnknownSourceError
from tests.conftest import emptied_engine
from tests.sync.helpers import add_source, patient


def test_a_page_of_an_unknown_source_writes_nothing(
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session:
        with pytest.raises(UnknownSourceError):
            ingest_page(session, 4242, Page("Patient", [patient("p1")], None))
        session.rollback()
        assert session.scalar(select(func.count()).select_from(SourceRecord)) == 0


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """PostgreSQL only: SQLite has one writer at a time, so a page holds every source."""
    yield from emptied_engine(pg_url)


def test_deleting_a_source_waits_for_its_page(pg_engine: Engine) -> None:
    engine = pg_engine
    session_factory = make_session_factory(engine)
    source_id = add_source(session_factory)
    with session_factory() as page_session:
        # No cursor: the cursor's own key would lock the source row too.
        ingest_page(page_session, source_id, Page("Patient", [patient("p1")], None))
        with engine.connect() as other:
            other.execute(text("SET lock_timeout = '200ms'"))
            with pytest.raises(OperationalError, match="lock timeout"):
                other.execute(text("DELETE FROM source WHERE id = :id"), {"id": source_id})
            other.rollback()
        page_session.commit()
    with engine.begin() as other:
        other.execute(text("DELETE FROM source WHERE id = :id"), {"id": source_id})
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(SourceRecord)) == 0
