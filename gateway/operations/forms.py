"""A patient portal submits a completed form: ``POST /fhir/QuestionnaireResponse``.

This is the SDC Form Receiver's part (https://hl7.org/fhir/uv/sdc/CapabilityStatement-sdc-form-receiver.html):
the other half of "ask once". The portal filled its form from the golden record
(``Questionnaire/$populate``); the patient reviewed it; what they answered now reaches
every consumer:

1. the QuestionnaireResponse (``completed`` or ``amended``, ``subject`` a golden Patient
   of this server, its Questionnaire ``contained`` or stored here under the canonical its
   ``questionnaire`` names) is checked;
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
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, func, literal, or_, select
from sqlalchemy.orm import Session

from gateway.operations.extract import EXTRACTABLE_STATUSES, check_response, extract_resources
from gateway.operations.keyset import Keyset
from gateway.operations.params import parse_date, parse_token, split_or
from gateway.operations.populate import subject_id
from gateway.operations.questionnaires import StoredForms
from gateway.operations.read import check_id, patient_ids, survivor_of
from gateway.operations.sql import SortColumn, date_condition
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
from store.models import FormResponse, GoldenPatient, Link, new_uuid
from store.types import UTCDateTime, fhir_instant, utcnow
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
    request = check_response(body, None, StoredForms(session))
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
            questionnaire=_canonical(request.questionnaire),
            status=body["status"],
            authored=_authored(body.get("authored")),
            resource=stored,
            received_at=now,
        )
    )
    session.flush()
    return Submitted(stored, receipt.golden_id, receipt.changed, issues)


def _canonical(questionnaire: dict[str, Any]) -> str | None:
    url, version = questionnaire.get("url"), questionnaire.get("version")
    if not isinstance(url, str) or not url:
        return None
    return f"{url}|{version}" if isinstance(version, str) and version else url


def _authored(value: Any) -> datetime | None:
    """The start of ``authored`` (a FHIR dateTime of any precision), or None."""
    if not isinstance(value, str):
        return None
    try:
        return parse_date(value, "authored").low
    except OutcomeError:
        return None


def read_form(session: Session, form_id: str) -> FormResponse:
    check_id("QuestionnaireResponse", form_id)
    form = session.get(FormResponse, form_id)
    if form is None:
        raise OutcomeError(not_found(f"QuestionnaireResponse/{form_id} is not known."))
    return form


# --- search ----------------------------------------------------------------------------

FORM_SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "_id": ("token", "The id of the QuestionnaireResponse"),
    "_lastUpdated": ("date", "When askonce received the form"),
    "subject": ("reference", "The golden Patient (id or Patient/id); a merged one's too"),
    "patient": ("reference", "The same as subject"),
    "questionnaire": ("reference", "The form's canonical URL (a version after |, optional)"),
    "authored": ("date", "When the answers were recorded"),
    "status": ("token", "completed | amended"),
}
SUPPORTED = {name: frozenset[str]() for name in FORM_SEARCH_PARAMS}
SORTABLE = frozenset({"_id", "_lastUpdated", "authored"})
#: Sort position of a form without ``authored`` (first ascending, last descending).
NOT_AUTHORED = datetime(1, 1, 1, tzinfo=UTC)
_SORT: dict[str, SortColumn] = {
    "_id": (FormResponse.id, "str"),
    "_lastUpdated": (FormResponse.received_at, "dt"),
    "authored": (func.coalesce(FormResponse.authored, literal(NOT_AUTHORED, UTCDateTime)), "dt"),
}


def _value_of(form: FormResponse, param: str) -> Any:
    if param == "_id":
        return form.id
    if param == "_lastUpdated":
        return form.received_at
    return form.authored or NOT_AUTHORED


def _criterion(session: Session, name: str, _modifier: str | None, raw: str) -> ColumnElement[bool]:
    values = split_or(raw)
    if name in ("subject", "patient"):
        golden_ids = patient_ids(session, raw, name)
        records = select(Link.source_record_id).where(Link.golden_id.in_(golden_ids))
        return FormResponse.source_record_id.in_(records)
    if name == "_id":
        return FormResponse.id.in_(values)
    if name == "questionnaire":
        return or_(
            *(
                FormResponse.questionnaire == value
                if "|" in value
                else or_(
                    FormResponse.questionnaire == value,
                    FormResponse.questionnaire.startswith(value + "|", autoescape=True),
                )
                for value in values
            )
        )
    if name == "status":
        return FormResponse.status.in_([parse_token(v).code for v in values])
    column = FormResponse.received_at if name == "_lastUpdated" else FormResponse.authored
    return or_(*(date_condition(column, parse_date(v, name), as_date=False) for v in values))


FORM_KEYSET = Keyset(
    path="QuestionnaireResponse",
    rows=lambda: select(FormResponse),
    supported=SUPPORTED,
    sortable=SORTABLE,
    criterion=_criterion,
    sort=_SORT,
    value_of=_value_of,
    render=lambda form: dict(form.resource),
)
#: ``GET /fhir/QuestionnaireResponse?…``: the forms portals submitted, in keyset pages. A portal
#: asks ``subject=<id>&questionnaire=<form>&_sort=-authored&_count=1`` whether (and when) the
#: patient last confirmed what a form asks: ask once.
search_forms = FORM_KEYSET.search
