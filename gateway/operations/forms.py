"""A patient portal submits a completed form: ``POST /fhir/QuestionnaireResponse``.

This is the SDC Form Receiver's part (https://hl7.org/fhir/uv/sdc/CapabilityStatement-sdc-form-receiver.html):
the other half of "ask once". The portal filled its form from the golden record
(``Questionnaire/$populate``); the patient reviewed it; what they answered now reaches
every consumer:

1. the QuestionnaireResponse (``completed`` or ``amended``, ``subject`` a golden Patient
   of this server, its Questionnaire ``contained``: this server keeps none) is checked;
2. the answers are extracted to a Patient (``$extract``'s definition-based extraction,
   :mod:`gateway.operations.extract`);
3. the Patient is taken in as the record of the portal's source (the ``portal`` source
   whose ``client_id`` is the caller's), pinned to the subject's golden record, whose
   contact data survivorship then takes from the patient's own answers
   (:func:`sync.forms.receive_form`; a form that describes someone else is refused, 422);
4. the QuestionnaireResponse is kept (``GET /fhir/QuestionnaireResponse/{id}``).

All of it is one transaction: a refused form leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.operations.extract import EXTRACTABLE_STATUSES, check_response, extract_resources
from gateway.operations.populate import subject_id
from gateway.operations.read import check_id, survivor_of
from gateway.outcomes import (
    Outcome,
    OutcomeError,
    bad_request,
    forbidden,
    issue,
    not_found,
    operation_outcome,
    outcome,
    unprocessable,
)
from store.models import FormResponse, GoldenPatient, new_uuid
from store.types import fhir_instant, utcnow
from sync.forms import FormRejectedError, portal_source_of, receive_form
from sync.patients import PatientOptions

ACTIVE = "active"


@dataclass(frozen=True)
class Submitted:
    """A form taken in: the stored QuestionnaireResponse and what it did."""

    resource: dict[str, Any]
    golden_id: str
    changed: bool
    issues: list[dict[str, Any]]

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome a ``Prefer: return=OperationOutcome`` asks for."""
        what = "updated" if self.changed else "already held these answers; unchanged"
        note = issue(
            "informational",
            f"The answers were taken in for Patient/{self.golden_id}: its record {what}.",
            severity="information",
        )
        return operation_outcome([note, *self.issues])


def _subject(session: Session, body: dict[str, Any], base: str) -> str:
    """The active golden record the form is about (a merged subject's survivor)."""
    golden_id = subject_id(body.get("subject"), base)
    status = session.scalar(select(GoldenPatient.status).where(GoldenPatient.id == golden_id))
    if status is None:
        raise OutcomeError(unprocessable("subject is not a Patient of this server.", "subject"))
    if status != ACTIVE:
        survivor = survivor_of(session, golden_id)
        if survivor is None:
            raise OutcomeError(unprocessable(f"subject's record is {status}.", "subject"))
        golden_id = survivor
    return golden_id


def _rejected(exc: FormRejectedError) -> Outcome:
    return outcome(422, "business-rule", exc.reason, expression=exc.expression or None)


def submit_form(
    session: Session,
    body: Any,
    *,
    base: str,
    client_id: str,
    options: PatientOptions | None = None,
) -> Submitted:
    """Take in a completed form (the caller commits); OutcomeError when it is refused."""
    if not isinstance(body, dict) or body.get("resourceType") != "QuestionnaireResponse":
        raise OutcomeError(bad_request("The body must be a QuestionnaireResponse.", "resourceType"))
    if body.get("status") not in EXTRACTABLE_STATUSES:
        raise OutcomeError(
            unprocessable(
                "Only a completed (or amended) QuestionnaireResponse is taken in.", "status"
            )
        )
    request = check_response(body, None)
    source = portal_source_of(session, client_id)
    if source is None:
        raise OutcomeError(
            forbidden(
                "No portal source receives this client's forms: register one with "
                "askonce sources add NAME --kind portal --url URL --option client_id=CLIENT_ID."
            )
        )
    golden_id = _subject(session, body, base)
    extracted = extract_resources(request)
    patients = [(i, b) for i, b in enumerate(extracted.resources) if b.resource_type == "Patient"]
    issues = list(extracted.issues)
    if len(patients) != 1:
        raise OutcomeError(
            unprocessable(
                "The form must extract exactly one Patient (sdc-questionnaire-definitionExtract).",
                "Questionnaire",
            )
        )
    position, patient = patients[0]
    if position in extracted.invalid:
        raise OutcomeError(
            unprocessable("The Patient the form gives is not valid.", extracted.invalid[position])
        )
    others = sorted({b.resource_type for b in extracted.resources} - {"Patient"})
    if others:
        issues.append(
            issue(
                "not-supported",
                f"Only Patient data is taken in; {', '.join(others)} was left out.",
                severity="warning",
            )
        )
    try:
        receipt = receive_form(
            session,
            source,
            golden_id,
            patient.resource,
            actor=f"portal:{client_id}",
            options=options,
        )
    except FormRejectedError as exc:
        raise OutcomeError(_rejected(exc)) from exc
    now = utcnow()
    form_id = new_uuid()
    stored = {
        **body,
        "id": form_id,
        "meta": {**(body.get("meta") or {}), "versionId": "1", "lastUpdated": fhir_instant(now)},
    }
    session.add(
        FormResponse(
            id=form_id,
            source_id=source.id,
            source_record_id=receipt.record_id,
            golden_id=receipt.golden_id,
            client_id=client_id,
            resource=stored,
            received_at=now,
        )
    )
    session.flush()
    return Submitted(stored, receipt.golden_id, receipt.changed, issues)


def read_form(session: Session, form_id: str) -> FormResponse:
    check_id("QuestionnaireResponse", form_id)
    form = session.get(FormResponse, form_id)
    if form is None:
        raise OutcomeError(not_found(f"QuestionnaireResponse/{form_id} is not known."))
    return form
