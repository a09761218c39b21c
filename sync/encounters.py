"""Encounters of a page: validate, store in bulk, attach to the patient's golden record.

Encounters need no matching, so they are written with set-based statements (one
``INSERT … RETURNING`` per table and page) rather than object by object. An
Encounter whose ``subject`` Patient has not arrived from its source yet is stored
with ``golden_id`` NULL and status ``pending``; :func:`attach_waiting` attaches it
when the Patient is resolved, so nothing is lost to arrival order.
https://hl7.org/fhir/R4/encounter.html
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from fhir_mapping import InvalidResource, SourceEncounter, parse_encounter
from store.models import Base, Encounter, Link, SourceRecord
from store.types import utcnow
from sync.records import (
    STATUS_ACTIVE,
    STATUS_PENDING,
    Incoming,
    chunked,
    is_unchanged,
    quarantine,
    shape_error,
)

EVENT_CREATED = "encounter.created"
EVENT_UPDATED = "encounter.updated"
EVENT_DELETED = "encounter.deleted"

#: Core tables for the bulk statements (no ORM bookkeeping per row).
_RECORD_TABLE = Base.metadata.tables["source_record"]
_ENCOUNTER_TABLE = Base.metadata.tables["encounter"]
_OUTBOX_TABLE = Base.metadata.tables["outbox"]
#: FHIR ``date``/``dateTime`` precisions by string length: year, year-month, date.
_PARTIAL_DATE_FORMATS = {4: "%Y", 7: "%Y-%m", 10: "%Y-%m-%d"}


@dataclass
class EncounterOutcome:
    stored: int = 0
    skipped: int = 0
    quarantined: int = 0
    waiting: int = 0


@dataclass(slots=True)
class _Stored:
    record_id: int
    status: str
    content_hash: str | None
    last_updated: datetime | None
    encounter_id: int | None


def parse_fhir_datetime(value: str | None) -> datetime | None:
    """A FHIR ``dateTime`` (any precision) as an aware datetime; partial dates start the period."""
    if not value:
        return None
    fmt = _PARTIAL_DATE_FORMATS.get(len(value))
    try:
        if fmt is not None:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def outbox_row(
    event_type: str, encounter_id: int, *, now: datetime | None = None, **payload: Any
) -> dict[str, Any]:
    """An outbox row for an Encounter event (ids only: the payload never carries PHI)."""
    now = now or utcnow()
    return {
        "event_type": event_type,
        "aggregate_type": "Encounter",
        "aggregate_id": str(encounter_id),
        "payload": {"encounter_id": encounter_id, **payload},
        "created_at": now,
        "next_attempt_at": now,
        "attempts": 0,
    }


def _load_stored(
    session: Session, source_id: int, resource_ids: Sequence[str]
) -> dict[str, _Stored]:
    found: dict[str, _Stored] = {}
    for chunk in chunked(list(dict.fromkeys(resource_ids))):
        rows = session.execute(
            select(
                SourceRecord.id,
                SourceRecord.resource_id,
                SourceRecord.status,
                SourceRecord.content_hash,
                SourceRecord.last_updated,
                Encounter.id,
            )
            .outerjoin(Encounter, Encounter.source_record_id == SourceRecord.id)
            .where(
                SourceRecord.source_id == source_id,
                SourceRecord.resource_type == "Encounter",
                SourceRecord.resource_id.in_(chunk),
            )
        )
        for rec_id, rid, status, digest, updated, enc_id in rows:
            found[rid] = _Stored(rec_id, status, digest, updated, enc_id)
    return found


def golden_ids_of_patients(
    session: Session, source_id: int, patient_ids: Sequence[str]
) -> dict[str, str]:
    """Source Patient resource id -> golden id, for the linked active Patients among them."""
    found: dict[str, str] = {}
    for chunk in chunked(list(dict.fromkeys(patient_ids))):
        rows = session.execute(
            select(SourceRecord.resource_id, Link.golden_id)
            .join(Link, Link.source_record_id == SourceRecord.id)
            .where(
                SourceRecord.source_id == source_id,
                SourceRecord.resource_type == "Patient",
                SourceRecord.status == STATUS_ACTIVE,
                SourceRecord.resource_id.in_(chunk),
            )
        )
        found.update({rid: golden for rid, golden in rows})
    return found


def _encounter_values(
    encounter: SourceEncounter, raw: dict[str, Any], golden_id: str | None, now: datetime
) -> dict[str, Any]:
    period = encounter.period
    return {
        "patient_resource_id": encounter.patient_id,
        "golden_id": golden_id,
        "status": encounter.status,
        "class_code": encounter.class_code.code if encounter.class_code else None,
        "period_start": parse_fhir_datetime(period.start if period else None),
        "period_end": parse_fhir_datetime(period.end if period else None),
        "resource": raw,
        "last_updated": now,
    }


def _normalized(encounter: SourceEncounter) -> dict[str, Any]:
    """The searchable core of a SourceEncounter (``dataclasses.asdict`` costs more than
    validation at bulk rates; the full resource is kept in ``raw`` and ``encounter.resource``)."""
    period = encounter.period
    coding = encounter.class_code
    return {
        "resource_id": encounter.resource_id,
        "version_id": encounter.version_id,
        "last_updated": encounter.last_updated,
        "patient_id": encounter.patient_id,
        "status": encounter.status,
        "class_code": {"system": coding.system, "code": coding.code} if coding else None,
        "period": {"start": period.start, "end": period.end} if period else None,
    }


def ingest_encounters(
    session: Session, source_id: int, incoming: Sequence[Incoming]
) -> EncounterOutcome:
    """Store the Encounters of one page and attach each to its golden patient (no commit)."""
    outcome = EncounterOutcome()
    stored = _load_stored(session, source_id, [i.resource_id for i in incoming])
    valid: list[tuple[Incoming, SourceEncounter, _Stored | None]] = []
    for item in incoming:
        current = stored.get(item.resource_id)
        if is_unchanged(current, item):
            outcome.skipped += 1
            continue
        error: dict[str, Any] | None = None
        if item.shape_error is not None:
            error = shape_error(item)
        else:
            try:
                valid.append((item, parse_encounter(item.raw), current))
                continue
            except InvalidResource as exc:
                error = exc.to_dict()
        existing = session.get(SourceRecord, current.record_id) if current else None
        # A stored Encounter stays as last received valid; the record says why it is not newer.
        quarantine(session, source_id, item, error, existing)
        outcome.quarantined += 1
    if not valid:
        session.flush()
        return outcome
    golden = golden_ids_of_patients(
        session, source_id, [e.patient_id for _, e, _ in valid if e.patient_id]
    )
    now = utcnow()
    new_records: list[dict[str, Any]] = []
    record_updates: list[dict[str, Any]] = []
    encounter_rows: dict[str, dict[str, Any]] = {}
    encounter_updates: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for item, encounter, current in valid:
        golden_id = golden.get(encounter.patient_id) if encounter.patient_id else None
        waiting = encounter.patient_id is not None and golden_id is None
        outcome.waiting += waiting
        record = {
            "raw": item.raw,
            "normalized": _normalized(encounter),
            "content_hash": item.content_hash,
            "version_id": item.version_id,
            "last_updated": item.last_updated,
            "status": STATUS_PENDING if waiting else STATUS_ACTIVE,
            "updated_at": now,
        }
        values = _encounter_values(encounter, item.raw, golden_id, now)
        if current is None:
            new_records.append(
                {
                    "source_id": source_id,
                    "resource_type": "Encounter",
                    "resource_id": item.resource_id,
                    "received_at": now,
                    **record,
                }
            )
            encounter_rows[item.resource_id] = values
        else:
            record_updates.append({"id": current.record_id, "error": None, **record})
            if current.encounter_id is None:
                encounter_rows[item.resource_id] = {"source_record_id": current.record_id, **values}
            else:
                encounter_updates.append({"id": current.encounter_id, **values})
                events.append(
                    outbox_row(
                        EVENT_UPDATED,
                        current.encounter_id,
                        now=now,
                        golden_id=golden_id,
                        source_id=source_id,
                        resource_id=item.resource_id,
                    )
                )
        outcome.stored += 1
    # Plain executemany, then one indexed read of the new ids: on both drivers this is
    # several times cheaper than INSERT … RETURNING rendered as one huge statement.
    if new_records:
        session.execute(insert(_RECORD_TABLE), new_records)
        new_ids = [r["resource_id"] for r in new_records]
        for chunk in chunked(new_ids):
            for record_id, resource_id in session.execute(
                select(SourceRecord.id, SourceRecord.resource_id).where(
                    SourceRecord.source_id == source_id,
                    SourceRecord.resource_type == "Encounter",
                    SourceRecord.resource_id.in_(chunk),
                )
            ):
                encounter_rows[resource_id]["source_record_id"] = record_id
    if record_updates:
        session.execute(update(SourceRecord), record_updates)
    if encounter_updates:
        session.execute(update(Encounter), encounter_updates)
    if encounter_rows:
        rows = [{"source_id": source_id, **values} for values in encounter_rows.values()]
        session.execute(insert(_ENCOUNTER_TABLE), rows)
        rid_by_record = {v["source_record_id"]: rid for rid, v in encounter_rows.items()}
        inserted: list[tuple[int, str | None, int]] = []
        for chunk in chunked(list(rid_by_record)):
            for enc_id, enc_golden, record_id in session.execute(
                select(Encounter.id, Encounter.golden_id, Encounter.source_record_id).where(
                    Encounter.source_record_id.in_(chunk)
                )
            ):
                inserted.append((enc_id, enc_golden, record_id))
        for enc_id, golden_id, record_id in inserted:
            events.append(
                outbox_row(
                    EVENT_CREATED,
                    enc_id,
                    now=now,
                    golden_id=golden_id,
                    source_id=source_id,
                    resource_id=rid_by_record[record_id],
                )
            )
    if events:
        session.execute(insert(_OUTBOX_TABLE), events)
    return outcome


def attach_waiting(session: Session, source_id: int, golden_by_patient: Mapping[str, str]) -> int:
    """Attach this source's Encounters of the given Patients to their (new) golden records.

    Covers Encounters that arrived before their Patient and Encounters whose Patient
    was re-linked to another golden record. Returns how many Encounters changed.
    """
    if not golden_by_patient:
        return 0
    changes: list[tuple[int, int, str, str]] = []
    for chunk in chunked(list(golden_by_patient)):
        rows = session.execute(
            select(
                Encounter.id,
                Encounter.source_record_id,
                Encounter.patient_resource_id,
                Encounter.golden_id,
                SourceRecord.resource_id,
                SourceRecord.status,
            )
            .join(SourceRecord, SourceRecord.id == Encounter.source_record_id)
            .where(Encounter.source_id == source_id, Encounter.patient_resource_id.in_(chunk))
        )
        for enc_id, record_id, patient_id, current, resource_id, status in rows:
            target = golden_by_patient[patient_id or ""]
            # The MPI may already have repointed it (mpi.repoint_encounters); a pending
            # record still needs its status and its event.
            if current != target or status == STATUS_PENDING:
                changes.append((enc_id, record_id, target, resource_id))
    if not changes:
        return 0
    session.execute(
        update(Encounter), [{"id": enc_id, "golden_id": g} for enc_id, _, g, _ in changes]
    )
    record_ids = [record_id for _, record_id, _, _ in changes]
    for chunk in chunked(record_ids):
        session.execute(
            update(SourceRecord)
            .where(SourceRecord.id.in_(chunk), SourceRecord.status == STATUS_PENDING)
            .values(status=STATUS_ACTIVE, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    now = utcnow()
    session.execute(
        insert(_OUTBOX_TABLE),
        [
            outbox_row(
                EVENT_UPDATED, enc_id, now=now, golden_id=g, source_id=source_id, resource_id=rid
            )
            for enc_id, _, g, rid in changes
        ],
    )
    return len(changes)
