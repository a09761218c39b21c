"""The stored Encounter records of a page, read at the driver level, are what the ORM reads:
the same records, statuses, hashes and aware UTC ``last_updated`` (none included), only
those of the source and type asked, over more ids than one statement takes (both backends)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import store.bulk
from connectors import Page
from store.models import SourceRecord
from sync import ingest_page
from sync.encounters import _load_stored
from tests.sync.helpers import add_source, encounter, patient

UPDATED = ["2026-01-15T09:30:00Z", "2026-01-16T10:00:00.25+01:00", None]


def _page(prefix: str, count: int) -> list[dict[str, Any]]:
    page = []
    for i in range(count):
        resource = encounter(f"{prefix}{i}", "p1" if i % 2 else "p-later")
        updated = UPDATED[i % len(UPDATED)]
        if updated is None:
            resource.pop("meta")
        else:
            resource["meta"]["lastUpdated"] = updated
        if i % 7 == 0:
            resource["status"] = "not-a-status"  # quarantined: stored too
        page.append(resource)
    return page


def test_stored_records_equal_the_orm_read(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.bulk, "ROWS_IN_CHUNK", 4)
    source_id = add_source(session_factory)
    other_id = add_source(session_factory, name="other")
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "p"))
        ingest_page(session, source_id, Page("Encounter", _page("e", 17), "c1"))
        ingest_page(session, other_id, Page("Encounter", _page("e", 5), "c2"))
        session.commit()
    asked = [f"e{i}" for i in range(20)] + ["p1", "e3", "missing"]
    with session_factory() as session:
        got = _load_stored(session, source_id, asked)
        rows = session.execute(
            select(
                SourceRecord.resource_id,
                SourceRecord.id,
                SourceRecord.status,
                SourceRecord.content_hash,
                SourceRecord.last_updated,
            ).where(
                SourceRecord.source_id == source_id,
                SourceRecord.resource_type == "Encounter",
                SourceRecord.resource_id.in_(asked),
            )
        ).all()
    assert len(rows) == 17
    want = {rid: (rec_id, status, digest, updated) for rid, rec_id, status, digest, updated in rows}
    assert {rid: (s.id, s.status, s.content_hash, s.last_updated) for rid, s in got.items()} == want
    assert {s.status for s in got.values()} == {"active", "pending", "quarantined"}
    assert any(s.last_updated is None for s in got.values())
    for stored in got.values():
        assert stored.encounter_id is None
        if stored.last_updated is not None:
            assert stored.last_updated.utcoffset() is not None
            assert stored.last_updated.utcoffset().total_seconds() == 0
