"""A page of new Encounters is written in several statements on PostgreSQL, each run in
the background while the next Encounters are validated (store.background.Background):
every resource is stored exactly once with its encounter row and its event, invalid
ones are quarantined, and a statement that fails fails the page, which rolls back whole."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

import sync.encounters
from connectors import Page
from store.models import Encounter, Outbox, SourceRecord, SyncCursor
from sync import ingest_page
from sync.encounters import EVENT_CREATED, ingest_encounters
from sync.records import STATUS_ACTIVE, STATUS_PENDING, STATUS_QUARANTINED, describe
from tests.sync.helpers import add_source, encounter, patient

#: Statements of a few rows, so that a small page takes several.
ROWS_PER_STATEMENT = 4


@pytest.fixture
def small_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync.encounters, "PG_NEW_ROWS_PER_STATEMENT", ROWS_PER_STATEMENT)


def _page(count: int) -> list[dict[str, Any]]:
    """New Encounters of a known and of an unknown Patient; every fifth one invalid."""
    page = []
    for i in range(count):
        resource = encounter(f"e{i:03}", "p1" if i % 2 else "p-later")
        if i % 5 == 0:
            resource["status"] = "not-a-status"
        page.append(resource)
    return page


@pytest.mark.usefixtures("small_statements")
def test_a_page_written_in_several_statements_stores_every_encounter_once(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    count = ROWS_PER_STATEMENT * 5 + 3
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "p"))
        session.commit()
        result = ingest_page(session, source_id, Page("Encounter", _page(count), "c1"))
        session.commit()
        assert (result.stored, result.quarantined) == (count - (count + 4) // 5, (count + 4) // 5)
        rows = session.execute(
            select(SourceRecord.resource_id, SourceRecord.status, Encounter.id, Encounter.golden_id)
            .outerjoin(Encounter, Encounter.source_record_id == SourceRecord.id)
            .where(SourceRecord.resource_type == "Encounter")
        ).all()
        created = session.execute(
            select(Outbox.aggregate_id, Outbox.payload).where(Outbox.event_type == EVENT_CREATED)
        ).all()
    assert len(rows) == count
    for resource_id, status, encounter_id, golden_id in rows:
        number = int(resource_id[1:])
        if number % 5 == 0:
            assert (status, encounter_id) == (STATUS_QUARANTINED, None)
        elif number % 2:
            assert status == STATUS_ACTIVE and golden_id is not None
        else:
            assert (status, golden_id) == (STATUS_PENDING, None)
    encounters = {encounter_id: resource_id for resource_id, _, encounter_id, _ in rows}
    assert sorted(int(aggregate) for aggregate, _ in created) == sorted(
        e for e in encounters if e is not None
    )
    assert all(payload["resource_id"] == encounters[int(a)] for a, payload in created)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.usefixtures("small_statements")
def test_a_failing_statement_fails_the_page_and_nothing_of_it_stays(
    session_factory: sessionmaker[Session],
) -> None:
    """The same resource id in two statements of one page (ingest_page keeps one per id;
    called directly, nothing does): the later insert breaks the key, after the earlier
    statements ran in the background."""
    source_id = add_source(session_factory)
    page = [describe(r, "Encounter") for r in _page(ROWS_PER_STATEMENT * 3)]
    page.append(describe(encounter("e001", "p1"), "Encounter"))
    with session_factory() as session:
        with pytest.raises(IntegrityError):
            ingest_encounters(session, source_id, page)
        session.rollback()
        assert session.scalar(select(func.count()).select_from(SourceRecord)) == 0
        assert session.scalar(select(func.count()).select_from(Outbox)) == 0
        assert session.scalar(select(func.count()).select_from(SyncCursor)) == 0
        # The connection is free again: the page can be ingested now.
        result = ingest_page(session, source_id, Page("Encounter", _page(6), "c1"))
        session.commit()
    assert result.stored + result.quarantined == 6
