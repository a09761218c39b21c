"""Patients of a page: validate, store, resolve through the MPI in batches.

Each valid Patient becomes (or updates) an ``active`` source record whose
``normalized`` column holds the :class:`~fhir_mapping.SourcePatient` (its compact form,
:meth:`~fhir_mapping.SourcePatient.to_compact_dict`) and whose
``match_features`` column its match features (:func:`mpi.features.encode_features`: the
MPI reads a candidate's features from there); the batch then goes to
:func:`mpi.resolve_patients`, which links each record to a golden record and writes
the ``patient.*`` outbox events. Encounters of this source that were waiting for one of
these Patients are attached afterwards (see :mod:`sync.encounters`).
https://hl7.org/fhir/R4/patient.html
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from fhir_mapping import InvalidResource, SourcePatient, parse_patient
from mpi import MatchSettings, Resolution, resolve_patients, stored_features
from mpi.features import MatchFeatures, encode_features, extract_features
from mpi.operations import store_decision
from mpi.storage import linked_record_ids
from store.bulk import BulkWriter
from store.jsontext import json_text
from store.models import SourceRecord
from store.types import utcnow
from sync.records import (
    RECORD_COLUMNS,
    RECORD_JSON,
    RECORD_UPDATE_COLUMNS,
    STATUS_ACTIVE,
    STATUS_DELETED,
    Incoming,
    StoredRecord,
    is_unchanged,
    load_states,
    mapping_error,
    quarantine,
    shape_error,
)

log = logging.getLogger(__name__)

#: Patients the MPI loads, decides and writes per set-based pass.
DEFAULT_PATIENT_BATCH = 1000

#: Columns of a new Patient source record and of an update of a stored one (followed by
#: its id): those of every source record, then the encoded match features.
PATIENT_RECORD_COLUMNS = (*RECORD_COLUMNS, "match_features")
PATIENT_UPDATE_COLUMNS = (*RECORD_UPDATE_COLUMNS, "match_features")


@dataclass(frozen=True)
class PatientOptions:
    """How a source's Patients are read (plain values, from the source's config)."""

    default_region: str = "US"
    mrn_system: str | None = None
    batch_size: int = DEFAULT_PATIENT_BATCH
    match_settings: MatchSettings | None = None
    #: Records said to be a known person rather than matched: (resource id, golden id,
    #: actor) each. A pinned record joins that golden record as a steward's "match" would
    #: (a portal's form, whose subject the portal authenticated: :mod:`sync.forms`).
    pins: tuple[tuple[str, str, str], ...] = ()


@dataclass
class PatientOutcome:
    stored: int = 0
    skipped: int = 0
    quarantined: int = 0
    golden_created: int = 0
    review_items: int = 0
    #: Resource id of each resolved Patient -> its golden id.
    golden_by_resource: dict[str, str] = field(default_factory=dict)
    #: Stored, valid Patients that say the source replaced them (a ``replaced-by`` link):
    #: their id -> the surviving Patient's id. Not resolved; the caller retires them.
    replaced: dict[str, str] = field(default_factory=dict)


def replaced_by(raw: dict[str, Any]) -> str | None:
    """The id of the Patient that replaced this one in its own source, when it says so.

    A ``link`` of type ``replaced-by`` (the source merged this Patient into another: "the
    patient resource containing this link must no longer be used",
    https://hl7.org/fhir/R4/codesystem-link-type.html) whose ``other`` is a relative
    reference ``Patient/<id>``: a Patient of the same server. An absolute or logical
    reference may name another system's record, which this source cannot vouch for."""
    links = raw.get("link")
    if not links or not isinstance(links, list):
        return None
    own = raw.get("id")
    for link in links:
        if not isinstance(link, dict) or link.get("type") != "replaced-by":
            continue
        other = link.get("other")
        reference = other.get("reference") if isinstance(other, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            target = reference[len("Patient/") :]
            if target and "/" not in target and target != own:
                return target
    return None


def ingest_patients(
    session: Session,
    source_id: int,
    incoming: Sequence[Incoming],
    options: PatientOptions,
    *,
    also_lock: Sequence[str] = (),
) -> PatientOutcome:
    """Store and resolve the Patients of one page (the caller commits). ``also_lock``:
    block keys the transaction needs locked besides its records' (its deletions').

    The valid Patients' source records are written at the driver level (one insert of
    the new ones, one update of the changed ones: :class:`store.bulk.BulkWriter`, each
    JSON column encoded once), then resolved in one call to the MPI.
    """
    outcome = PatientOutcome()
    # One entry per resource id (the last one), as the page's records are written at once.
    incoming = list({item.resource_id: item for item in incoming}.values())
    stored = load_states(session, source_id, "Patient", [i.resource_id for i in incoming])
    bulk = BulkWriter(session)
    now = bulk.timestamp(utcnow())
    new_rows: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    replaced: list[tuple[int, str | None]] = []  # (id, content hash) of the updated records
    valid: list[tuple[str, SourcePatient, MatchFeatures]] = []
    # Encoded lastUpdated values of the page (a source stamps many records alike).
    stamps: dict[Any, Any] = {None: None}
    for item in incoming:
        current = stored.get(item.resource_id)
        if is_unchanged(current, item) or _still_replaced(current, item):
            outcome.skipped += 1
            continue
        if item.shape_error is not None:
            _quarantine(session, source_id, item, shape_error(item), current)
            outcome.quarantined += 1
            continue
        try:
            patient = parse_patient(
                item.raw, default_region=options.default_region, mrn_system=options.mrn_system
            )
        except InvalidResource as exc:
            _quarantine(session, source_id, item, exc.to_dict(), current)
            outcome.quarantined += 1
            continue
        except Exception as exc:  # a mapping defect must not stop the page
            _quarantine(session, source_id, item, mapping_error(item, exc), current)
            outcome.quarantined += 1
            continue
        # Extracted once: stored with the record, and resolved with below.
        features = extract_features(patient)
        encoded = encode_features(features, item.content_hash)
        last_updated = stamps.get(item.last_updated, stamps)
        if last_updated is stamps:
            last_updated = stamps[item.last_updated] = bulk.timestamp(item.last_updated)
        values = (
            item.raw_json(),
            json_text(patient.to_compact_dict()),
            item.content_hash,
            item.version_id,
            last_updated,
            STATUS_ACTIVE,
            now,
        )
        if current is None:
            new_rows.append(
                (source_id, "Patient", item.resource_id, *values, now, item.line_digest, encoded)
            )
        else:
            updates.append((*values, None, item.line_digest, encoded, current.id))
            replaced.append((current.id, current.content_hash))
        outcome.stored += 1
        survivor = replaced_by(item.raw) if patient.links else None
        if survivor is not None:
            outcome.replaced[item.resource_id] = survivor  # kept, never matched
            continue
        valid.append((item.resource_id, patient, features))
    session.flush()  # quarantined records go out before the driver-level statements
    if not valid and not outcome.replaced:
        return outcome
    ids = {resource_id: record.id for resource_id, record in stored.items()}
    ids.update(_insert_records(session, bulk, source_id, new_rows))
    # What the updated records said before, for the MPI's re-check of their links (read
    # only when a page updates records: a first sync or an unchanged re-sync reads nothing).
    previous = stored_features(session, replaced)
    bulk.update_by_id("source_record", PATIENT_UPDATE_COLUMNS, updates, json_columns=RECORD_JSON)
    _expire_records(session, [row[-1] for row in updates])
    if options.pins:
        _pin(session, ids, options.pins)
    if not valid:
        return outcome
    # What the MPI reads of a source record: its id, source and resource id (plain
    # objects, never added to the session).
    batch = [
        (
            SourceRecord(id=ids[resource_id], source_id=source_id, resource_id=resource_id),
            patient,
        )
        for resource_id, patient, _ in valid
    ]
    # One call: the MPI takes the advisory locks of the whole transaction at once (in a
    # fixed order, so concurrent workers never deadlock), then resolves ``batch_size``
    # records per set-based pass.
    resolutions = resolve_patients(
        session,
        batch,
        settings=options.match_settings,
        chunk_size=options.batch_size,
        features=[features for _, _, features in valid],
        also_lock=also_lock,
        previous=previous,
    )
    _record_resolutions(outcome, batch, resolutions)
    return outcome


def _still_replaced(current: StoredRecord | None, item: Incoming) -> bool:
    """A retired Patient read again with the same content and a newer ``meta`` (a server
    that touched it): it stays retired. (A deleted record that comes back as a newer
    version is stored again; one that still says it was replaced is not back.)"""
    return (
        current is not None
        and current.status == STATUS_DELETED
        and current.content_hash == item.content_hash
        and "link" in item.raw
        and replaced_by(item.raw) is not None
    )


def _pin(session: Session, ids: dict[str, int], pins: Sequence[tuple[str, str, str]]) -> None:
    """A "match" decision between each pinned record and a record of its golden record,
    so that resolving links it there (``MANUAL``) whatever its score."""
    for resource_id, golden_id, actor in pins:
        record_id = ids.get(resource_id)
        anchor = next((r for r in linked_record_ids(session, golden_id) if r != record_id), None)
        if record_id is not None and anchor is not None:
            store_decision(session, record_id, anchor, "match", actor)
    session.flush()


def _quarantine(
    session: Session,
    source_id: int,
    item: Incoming,
    error: dict[str, Any],
    current: StoredRecord | None,
) -> None:
    existing = session.get(SourceRecord, current.id) if current is not None else None
    quarantine(session, source_id, item, error, existing)


def _insert_records(
    session: Session, bulk: BulkWriter, source_id: int, rows: Sequence[tuple[Any, ...]]
) -> dict[str, int]:
    """Insert new source records; their ids by resource id (returned by PostgreSQL, read
    back on SQLite, whose driver returns no rows from a bulk insert)."""
    returned = bulk.insert(
        "source_record",
        PATIENT_RECORD_COLUMNS,
        rows,
        json_columns=RECORD_JSON,
        returning=("id", "resource_id"),
    )
    if returned is not None:
        return {resource_id: record_id for record_id, resource_id in returned}
    return {
        resource_id: record.id
        for resource_id, record in load_states(
            session, source_id, "Patient", [row[2] for row in rows]
        ).items()
    }


def _expire_records(session: Session, record_ids: Sequence[int]) -> None:
    """Source records of the session updated behind its back are stale: expire them."""
    for record_id in record_ids:
        obj = session.identity_map.get(identity_key(SourceRecord, record_id))
        if obj is not None:
            session.expire(obj)


def _record_resolutions(
    outcome: PatientOutcome,
    chunk: Sequence[tuple[SourceRecord, SourcePatient]],
    resolutions: Sequence[Resolution],
) -> None:
    by_record = {record.id: record.resource_id for record, _ in chunk}
    for resolution in resolutions:
        resource_id = by_record.get(resolution.source_record_id)
        if resource_id is not None and resolution.golden_id is not None:
            outcome.golden_by_resource[resource_id] = resolution.golden_id
        if resolution.created:
            outcome.golden_created += 1
        if resolution.review_item_id is not None:
            outcome.review_items += 1
