"""The Encounter page writer finds the timestamps it encoded before by one lookup per
dialect: every stored period bound and ``lastUpdated`` is still the instant its FHIR text
says, for every precision, with none, and across the memo being cleared (both backends)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

import sync.encounters
from connectors import Page
from store.models import Encounter, SourceRecord
from sync import ingest_page
from sync.encounters import parse_fhir_datetime
from tests.sync.helpers import add_source, encounter, patient

PERIODS: list[dict[str, Any] | None] = [
    {"start": "2025-03-01T08:00:00Z", "end": "2025-03-01T09:00:00Z"},
    {"start": "2025"},
    {"start": "2025-04", "end": "2025-05"},
    {"start": "2025-04-02", "end": "2025-04-03"},
    {"start": "2025-04-02T10:11:12+02:00"},
    {"end": "2025-04-02T10:11:12.5-05:00"},
    None,
]
UPDATED = ["2026-01-15T09:30:00Z", "2026-01-16T10:00:00+01:00", None]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def test_stored_timestamps_are_the_fhir_instants(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync.encounters, "MAX_CACHED_TIMESTAMPS", 3)
    monkeypatch.setattr(sync.encounters, "_TIMESTAMPS", {False: {None: None}, True: {None: None}})
    source_id = add_source(session_factory)
    resources: dict[str, dict[str, Any]] = {}
    for round_ in range(2):  # the second round meets values encoded (and dropped) before
        for i, period in enumerate(PERIODS * 2):
            resource = encounter(f"e{round_}-{i}", "p1")
            resource.pop("period")
            if period is not None:
                resource["period"] = period
            updated = UPDATED[i % len(UPDATED)]
            if updated is None:
                resource.pop("meta")
            else:
                resource["meta"]["lastUpdated"] = updated
            resources[resource["id"]] = resource
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "p"))
        ingest_page(session, source_id, Page("Encounter", list(resources.values()), "c"))
        session.commit()
        rows = session.execute(
            select(
                SourceRecord.resource_id,
                SourceRecord.last_updated,
                Encounter.period_start,
                Encounter.period_end,
            ).join(Encounter, Encounter.source_record_id == SourceRecord.id)
        ).all()
    assert len(rows) == len(resources)
    for resource_id, last_updated, start, end in rows:
        resource = resources[resource_id]
        period = resource.get("period") or {}
        meta = resource.get("meta") or {}
        assert _utc(start) == _utc(parse_fhir_datetime(period.get("start")))
        assert _utc(end) == _utc(parse_fhir_datetime(period.get("end")))
        assert _utc(last_updated) == _utc(parse_fhir_datetime(meta.get("lastUpdated")))
    for stamps in sync.encounters._TIMESTAMPS.values():
        assert len(stamps) <= 3
