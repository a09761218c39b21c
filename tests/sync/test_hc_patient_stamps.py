"""A page's Patients encode each distinct ``lastUpdated`` once: every stored record keeps
its own instant, whether the page's records share it, differ, or have none (both
backends); a changed record stored again takes its new one. load_states, read at the driver
level, gives what the ORM reads of the same records."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from store.models import SourceRecord
from sync import ingest_page
from sync.records import load_records, load_states, parse_instant
from tests.sync.helpers import add_source, patient

UPDATED = [
    "2026-01-10T10:00:00Z",
    "2026-01-10T10:00:00Z",
    "2026-01-11T10:00:00+02:00",
    "2026-01-10T10:00:00.123456Z",
    None,
    "2026-01-11T10:00:00+02:00",
]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _stored(session: Session, source_id: int) -> dict[str, datetime | None]:
    rows = session.execute(
        select(SourceRecord.resource_id, SourceRecord.last_updated).where(
            SourceRecord.source_id == source_id
        )
    )
    return {resource_id: _utc(updated) for resource_id, updated in rows}


def test_each_patient_keeps_its_own_last_updated(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    page = []
    for i, updated in enumerate(UPDATED):
        resource = patient(f"p{i}", given=f"Ada{i}", birth=f"1980-04-{i + 1:02d}")
        if updated is None:
            resource.pop("meta")
        else:
            resource["meta"]["lastUpdated"] = updated
        page.append(resource)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", page, "c1"))
        session.commit()
        assert _stored(session, source_id) == {
            f"p{i}": parse_instant(updated) for i, updated in enumerate(UPDATED)
        }
    changed = patient("p1", given="Adaeze", birth="1980-04-02", updated="2026-02-01T00:00:00Z")
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [changed], "c2"))
        session.commit()
        assert _stored(session, source_id)["p1"] == datetime(2026, 2, 1, tzinfo=UTC)


def test_load_states_reads_what_the_orm_reads(session_factory: sessionmaker[Session]) -> None:
    source_id = add_source(session_factory)
    page = []
    for i, updated in enumerate(UPDATED):
        resource = patient(f"p{i}", given=f"Ada{i}", birth=f"1980-04-{i + 1:02d}")
        if updated is None:
            resource.pop("meta")
        else:
            resource["meta"]["lastUpdated"] = updated
        page.append(resource)
    page.append({"resourceType": "Patient", "id": "bad", "gender": "nope"})  # quarantined
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", page, "c1"))
        session.commit()
    asked = [f"p{i}" for i in range(len(UPDATED))] + ["bad", "absent", "p0"]
    with session_factory() as session:
        states = load_states(session, source_id, "Patient", asked)
        records = load_records(session, source_id, "Patient", asked)
        assert set(states) == set(records) == set(asked) - {"absent"}
        for resource_id, state in states.items():
            record = records[resource_id]
            assert (state.id, state.status, state.content_hash, state.last_updated) == (
                record.id,
                record.status,
                record.content_hash,
                record.last_updated,
            )
        assert states["bad"].status == "quarantined"
        assert states["p4"].last_updated is None
        assert states["p3"].last_updated == parse_instant(UPDATED[3])
        assert load_states(session, source_id, "Encounter", asked) == {}
