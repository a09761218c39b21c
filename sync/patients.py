"""Patients of a page: validate, store, resolve through the MPI in batches.

Each valid Patient becomes (or updates) an ``active`` source record whose
``normalized`` column holds the :class:`~fhir_mapping.SourcePatient`; the batch
then goes to :func:`mpi.resolve_patients`, which links each record to a golden
record and writes the ``patient.*`` outbox events. Encounters of this source that
were waiting for one of these Patients are attached afterwards (see
:mod:`sync.encounters`). https://hl7.org/fhir/R4/patient.html
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from fhir_mapping import InvalidResource, SourcePatient, parse_patient
from mpi import MatchSettings, Resolution, resolve_patients
from store.models import SourceRecord
from sync.records import (
    STATUS_ACTIVE,
    Incoming,
    is_unchanged,
    load_records,
    quarantine,
    shape_error,
)

log = logging.getLogger(__name__)

#: Patients the MPI loads, decides and writes per set-based pass.
DEFAULT_PATIENT_BATCH = 1000


@dataclass(frozen=True)
class PatientOptions:
    """How a source's Patients are read (plain values, from the source's config)."""

    default_region: str = "US"
    mrn_system: str | None = None
    batch_size: int = DEFAULT_PATIENT_BATCH
    match_settings: MatchSettings | None = None


@dataclass
class PatientOutcome:
    stored: int = 0
    skipped: int = 0
    quarantined: int = 0
    golden_created: int = 0
    review_items: int = 0
    #: Resource id of each resolved Patient -> its golden id.
    golden_by_resource: dict[str, str] = field(default_factory=dict)


def ingest_patients(
    session: Session,
    source_id: int,
    incoming: Sequence[Incoming],
    options: PatientOptions,
) -> PatientOutcome:
    """Store and resolve the Patients of one page (the caller commits)."""
    outcome = PatientOutcome()
    existing = load_records(session, source_id, "Patient", [i.resource_id for i in incoming])
    batch: list[tuple[SourceRecord, SourcePatient]] = []
    for item in incoming:
        current = existing.get(item.resource_id)
        if is_unchanged(current, item):
            outcome.skipped += 1
            continue
        if item.shape_error is not None:
            existing[item.resource_id] = quarantine(
                session, source_id, item, shape_error(item), current
            )
            outcome.quarantined += 1
            continue
        try:
            patient = parse_patient(
                item.raw, default_region=options.default_region, mrn_system=options.mrn_system
            )
        except InvalidResource as exc:
            existing[item.resource_id] = quarantine(
                session, source_id, item, exc.to_dict(), current
            )
            outcome.quarantined += 1
            continue
        record = current
        if record is None:
            record = SourceRecord(
                source_id=source_id, resource_type="Patient", resource_id=item.resource_id
            )
            session.add(record)
            existing[item.resource_id] = record
        record.raw = item.raw
        record.normalized = patient.to_dict()
        record.content_hash = item.content_hash
        record.version_id = item.version_id
        record.last_updated = item.last_updated
        record.status = STATUS_ACTIVE
        record.error = None
        batch.append((record, patient))
        outcome.stored += 1
    session.flush()
    if batch:
        # One call: the MPI takes the advisory locks of the whole transaction at once (in
        # a fixed order, so concurrent workers never deadlock), then resolves
        # ``batch_size`` records per set-based pass.
        resolutions = resolve_patients(
            session, batch, settings=options.match_settings, chunk_size=options.batch_size
        )
        _record_resolutions(outcome, batch, resolutions)
    return outcome


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
