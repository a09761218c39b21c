"""How many statements a page's new Encounters are split into on PostgreSQL
(:data:`sync.encounters.PG_NEW_ROWS_PER_STATEMENT`, a tuning knob) changes nothing that
is stored: the same records, encounter rows, pending and attached Encounters and outbox
events, in the same id order, as one statement per page. (SQLite writes a page in one
statement per table whatever the setting.)"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

import sync.encounters
from connectors import Page
from store import make_session_factory
from store.models import Encounter, Outbox, SourceRecord
from sync import ingest_page
from tests.conftest import truncate_all
from tests.sync.helpers import add_source, encounter, patient

#: New rows per statement; the first is the reference: one statement a page.
SETTINGS = [10_000, 1, 7, 250]


def _pages() -> list[Page]:
    """Patients, then Encounters of known and unknown Patients (some invalid, some
    repeated and changed), then the late Patient their waiting Encounters attach to."""
    first = []
    for i in range(60):
        resource = encounter(f"e{i:03}", ("p1", "p2", "p-late")[i % 3])
        if i % 11 == 0:
            resource["status"] = "not-a-status"
        first.append(resource)
    second = [encounter(f"e{i:03}", "p1", status="cancelled") for i in range(0, 60, 4)]
    second += [encounter(f"e{i:03}", "p-late") for i in range(60, 90)]
    second += [encounter(f"e{i:03}", "p2") for i in range(1, 60, 5)]
    return [
        Page("Patient", [patient("p1"), patient("p2", "Mensah", "Kofi", "1975-01-30")], "p1"),
        Page("Encounter", first, "e1"),
        Page("Encounter", second, "e2"),
        Page("Patient", [patient("p-late", "Silva", "Rui", "1990-07-14")], "p2"),
    ]


def _snapshot(session: Session) -> dict[str, Any]:
    """What was stored, with ids replaced by their rank (the order of insertion), so that
    runs in databases whose sequences stand elsewhere compare."""
    records = session.execute(
        select(
            SourceRecord.id,
            SourceRecord.resource_type,
            SourceRecord.resource_id,
            SourceRecord.raw,
            SourceRecord.normalized,
            SourceRecord.content_hash,
            SourceRecord.version_id,
            SourceRecord.last_updated,
            SourceRecord.status,
            SourceRecord.error,
        ).order_by(SourceRecord.id)
    ).all()
    record_rank = {row[0]: rank for rank, row in enumerate(records)}
    encounters = session.execute(
        select(
            Encounter.id,
            Encounter.source_record_id,
            Encounter.patient_resource_id,
            Encounter.golden_id,
            Encounter.status,
            Encounter.class_code,
            Encounter.period_start,
            Encounter.period_end,
            Encounter.resource,
        ).order_by(Encounter.id)
    ).all()
    encounter_rank = {row[0]: rank for rank, row in enumerate(encounters)}
    events = session.execute(
        select(Outbox.event_type, Outbox.aggregate_type, Outbox.aggregate_id, Outbox.payload)
        .where(Outbox.aggregate_type == "Encounter")
        .order_by(Outbox.id)
    ).all()
    golden_rank: dict[str | None, int | None] = {None: None}
    for row in encounters:
        golden_rank.setdefault(row[3], len(golden_rank))
    return {
        "records": [row[1:] for row in records],
        "encounters": [
            (record_rank[row[1]], row[2], golden_rank[row[3]], *row[4:]) for row in encounters
        ],
        "events": [
            (
                event_type,
                aggregate,
                encounter_rank[int(aggregate_id)],
                {
                    **payload,
                    "encounter_id": encounter_rank[payload["encounter_id"]],
                    "golden_id": golden_rank[payload["golden_id"]],
                },
            )
            for event_type, aggregate, aggregate_id, payload in events
        ],
    }


def _ingest(engine: Engine) -> tuple[list[tuple[int, ...]], dict[str, Any]]:
    truncate_all(engine)
    factory = make_session_factory(engine)
    source_id = add_source(factory)
    results = []
    with factory() as session:
        for page in _pages():
            result = ingest_page(session, source_id, page)
            session.commit()
            results.append(
                (result.stored, result.skipped, result.quarantined, result.waiting, result.attached)
            )
        return results, _snapshot(session)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_statement_sizes_change_nothing_stored(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = []
    for rows_per_statement in SETTINGS:
        monkeypatch.setattr(sync.encounters, "PG_NEW_ROWS_PER_STATEMENT", rows_per_statement)
        outcomes.append(_ingest(engine))
    reference_results, reference = outcomes[0]
    # The scenario covers what could go wrong: quarantined, waiting, attached, updated.
    assert reference_results[1][2] > 0 and reference_results[1][3] > 0
    assert reference_results[2][0] > 0 and reference_results[3][4] > 0
    assert {event[0] for event in reference["events"]} == {
        sync.encounters.EVENT_CREATED,
        sync.encounters.EVENT_UPDATED,
    }
    for results, snapshot in outcomes[1:]:
        assert results == reference_results
        assert snapshot == reference
