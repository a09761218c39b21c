"""A patient portal's completed forms, taken in as what the patient confirmed.

A portal pre-fills its intake form from the golden record (``Questionnaire/$populate``),
the patient corrects what is wrong, and the portal submits the answers
(``POST /fhir/QuestionnaireResponse``). The gateway extracts a Patient from them
(``$extract``'s definition-based extraction); :func:`receive_form` takes it in here:

- as a source record of the portal's source (kind ``portal``, one per sending consumer:
  its ``client_id`` option), whose values the patient confirmed
  (``patient_confirmed``), so that survivorship prefers them for contact data;
- one record per person: a later form updates it, element by element (a form that asks
  only for the phone numbers leaves the confirmed address of an earlier one in place);
- linked to the form's subject, not matched: the portal authenticated the patient, and a
  form that asks only for a phone number has nothing to match on. The record is pinned
  to the golden record as a steward's "match" would pin it (``MANUAL``);
- unless the answers say it is someone else. The identity the form gives (names, birth
  date, gender, identifiers; phone numbers and addresses are what a form may change) is
  compared with the golden record's (:func:`mpi.admin.check_identity`): a
  ``certainly-not`` score or a guard (another SSN, a twin's given name, Jr/Sr) refuses
  the form, and nothing is written. A patient whose birth date is wrong everywhere
  corrects it at the front desk, where someone checks who they are.

The page goes through the pipeline like any other (:func:`sync.pipeline.ingest_page`):
validation, the golden record written again, its ``patient.updated`` event.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors import Page
from connectors.config import PORTAL_KIND
from fhir_mapping import InvalidResource, parse_patient
from mpi.admin import check_identity
from mpi.storage import PATIENT_CONFIRMED_FLAG
from store.models import Link, SourceRecord
from store.models import Source as SourceRow
from store.types import fhir_instant
from sync.patients import PatientOptions
from sync.pipeline import IngestResult, ingest_page
from sync.records import STATUS_ACTIVE
from sync.runner import PORTAL_CLIENT_KEY, SyncError, bound_patient_options, lock_source

log = logging.getLogger(__name__)

#: Top-level Patient elements a form's record keeps from one form to the next (all but
#: those the server sets).
_SERVER_SET = frozenset({"resourceType", "id", "meta", "text"})


class FormRejectedError(SyncError):
    """A form that cannot be taken in: ``reason`` says why, naming fields, never values."""

    def __init__(self, reason: str, expression: Iterable[str] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expression = list(expression)


@dataclass(frozen=True)
class FormReceipt:
    """What taking in a form did."""

    source_id: int
    golden_id: str
    record_id: int
    #: The resource id of the portal's record of this person.
    resource_id: str
    #: False when the form repeated what the record already held.
    changed: bool
    result: IngestResult


def portal_options(config: Mapping[str, Any], resource_types: Iterable[str]) -> dict[str, Any]:
    """A portal source's config, validated: its sender's ``client_id`` is required, and
    its values are the patient's own (``patient_confirmed``, unless set to false)."""
    stored = dict(config)
    client_id = stored.get(PORTAL_CLIENT_KEY)
    if not isinstance(client_id, str) or not client_id.strip():
        raise ValueError(
            "a portal source needs --option client_id=<the portal consumer's client id>"
        )
    stored[PORTAL_CLIENT_KEY] = client_id.strip()
    stored.setdefault(PATIENT_CONFIRMED_FLAG, True)
    if list(resource_types) != ["Patient"]:
        raise ValueError("a portal source takes in Patient data only (--types Patient)")
    return stored


def portal_source_of(session: Session, client_id: str) -> SourceRow | None:
    """The enabled portal source that receives ``client_id``'s forms, if any."""
    for source in session.scalars(
        select(SourceRow)
        .where(SourceRow.kind == PORTAL_KIND, SourceRow.enabled.is_(True))
        .order_by(SourceRow.id)
    ):
        if (source.config or {}).get(PORTAL_CLIENT_KEY) == client_id and not source.removing_since:
            return source
    return None


def _record_of(session: Session, source_id: int, golden_id: str) -> SourceRecord | None:
    """The portal's record of the person of ``golden_id`` (the latest, if a merge brought
    two together)."""
    return session.scalars(
        select(SourceRecord)
        .join(Link, Link.source_record_id == SourceRecord.id)
        .where(
            SourceRecord.source_id == source_id,
            SourceRecord.resource_type == "Patient",
            SourceRecord.status == STATUS_ACTIVE,
            Link.golden_id == golden_id,
        )
        .order_by(SourceRecord.id.desc())
        .limit(1)
    ).first()


def _merged(previous: Mapping[str, Any] | None, answers: Mapping[str, Any]) -> dict[str, Any]:
    """The record after a form: the elements it answered replace those of the record."""
    merged = {k: v for k, v in (previous or {}).items() if k not in _SERVER_SET}
    merged.update({k: v for k, v in answers.items() if k not in _SERVER_SET})
    return merged


def receive_form(
    session: Session,
    source: SourceRow,
    golden_id: str,
    answers: Mapping[str, Any],
    *,
    actor: str,
    options: PatientOptions | None = None,
) -> FormReceipt:
    """Take in the Patient a form of ``source`` extracted for the person of ``golden_id``
    (an active golden record); the caller commits, or rolls back after a
    :class:`FormRejectedError`."""
    if not any(k not in _SERVER_SET for k in answers):
        raise FormRejectedError("The form gives no Patient data.", ["QuestionnaireResponse.item"])
    lock_source(session, source.id)
    existing = _record_of(session, source.id, golden_id)
    resource_id = existing.resource_id if existing is not None else golden_id
    patient = _merged(existing.raw if existing is not None else None, answers)
    patient.update(
        {
            "resourceType": "Patient",
            "id": resource_id,
            "meta": {"lastUpdated": fhir_instant()},
        }
    )
    options = options or bound_patient_options(source)
    try:
        parsed = parse_patient(
            patient, default_region=options.default_region, mrn_system=options.mrn_system
        )
    except InvalidResource as exc:
        raise FormRejectedError(
            "The Patient the form gives is not valid.", [i.path for i in exc.issues][:10]
        ) from exc
    check = check_identity(session, parsed, golden_id, settings=options.match_settings)
    if check.contradicts:
        reasons = ", ".join(check.vetoes) or "the names, birth date and identifiers differ"
        raise FormRejectedError(
            "The form describes someone other than its subject "
            f"({reasons}): it was not taken in. Identity corrections are made where the "
            "patient's identity can be checked.",
            ["QuestionnaireResponse.subject"],
        )
    pinned = dataclasses.replace(options, pins=((resource_id, golden_id, actor),))
    before = existing.content_hash if existing is not None else None
    result = ingest_page(
        session,
        source.id,
        Page(resource_type="Patient", resources=[patient], cursor=None),
        options=pinned,
        write_cursor=False,
    )
    if result.quarantined:
        raise FormRejectedError("The Patient the form gives is not valid.")
    record = session.scalars(
        select(SourceRecord).where(
            SourceRecord.source_id == source.id,
            SourceRecord.resource_type == "Patient",
            SourceRecord.resource_id == resource_id,
        )
    ).one()
    linked = session.scalar(select(Link.golden_id).where(Link.source_record_id == record.id))
    if linked != golden_id:
        # Nothing to pin to (a golden record with no source record), or a steward moved
        # this portal record to another person: never attach the answers elsewhere.
        raise FormRejectedError(
            "The form's record could not be attached to its subject; a data steward can "
            "say why (the subject holds no source record, or a steward moved this portal's "
            "record of the person).",
            ["QuestionnaireResponse.subject"],
        )
    log.info(
        "form received",
        extra={"source_id": source.id, "record_id": record.id, "golden_id": linked},
    )
    return FormReceipt(
        source.id,
        golden_id,
        record.id,
        resource_id,
        changed=record.content_hash != before,
        result=result,
    )
