"""Questionnaires kept for the SDC operations: ``/fhir/Questionnaire`` create/update, read,
delete and search, and the lookup the operations resolve a form with.

A portal registers its form once (``PUT /fhir/Questionnaire/{id}``, validated as
``$populate`` validates an inline form). Then ``$populate`` takes ``canonical`` or
``questionnaireRef``, and ``$extract`` and a submitted QuestionnaireResponse find the
form by the response's ``questionnaire`` (``url`` or ``url|version``) instead of carrying
it along. Only forms stored here resolve: a URL a client names is never fetched.
https://hl7.org/fhir/R4/questionnaire.html, https://hl7.org/fhir/R4/http.html#update
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, case, or_, select
from sqlalchemy.orm import Session

from gateway.operations.keyset import Keyset
from gateway.operations.params import parse_date, parse_token, split_or
from gateway.operations.populate import check_questionnaire
from gateway.operations.read import FHIR_ID, check_id
from gateway.operations.sql import SortColumn, date_condition
from gateway.outcomes import OutcomeError, bad_request, not_found
from store.models import StoredQuestionnaire
from store.types import fhir_instant, utcnow

QUESTIONNAIRE_SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "_id": ("token", "The id of the Questionnaire"),
    "_lastUpdated": ("date", "When it was stored"),
    "url": ("uri", "Its canonical URL"),
    "version": ("token", "Its business version"),
    "status": ("token", "draft | active | retired | unknown"),
}
SUPPORTED = {name: frozenset[str]() for name in QUESTIONNAIRE_SEARCH_PARAMS}
SORTABLE = frozenset({"_id", "_lastUpdated"})
_SORT: dict[str, SortColumn] = {
    "_id": (StoredQuestionnaire.id, "str"),
    "_lastUpdated": (StoredQuestionnaire.updated_at, "dt"),
}


class StoredForms:
    """The forms of this server, as the SDC operations look them up."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def by_canonical(self, canonical: str) -> dict[str, Any] | None:
        """The form a canonical names: ``url|version`` exactly; a bare ``url`` its active
        version if there is one, else the one stored last."""
        url, _, version = canonical.partition("|")
        stmt = select(StoredQuestionnaire.resource).where(StoredQuestionnaire.url == url)
        if version:
            stmt = stmt.where(StoredQuestionnaire.version == version)
        active_first = case((StoredQuestionnaire.status == "active", 0), else_=1)
        stmt = stmt.order_by(active_first, StoredQuestionnaire.updated_at.desc()).limit(1)
        found = self.session.scalar(stmt)
        return dict(found) if found is not None else None

    def by_id(self, questionnaire_id: str) -> dict[str, Any] | None:
        row = _stored(self.session, questionnaire_id)
        return dict(row.resource) if row is not None else None


def _stored(session: Session, questionnaire_id: str) -> StoredQuestionnaire | None:
    """The stored row of an id (None for one that cannot be a FHIR id)."""
    if not FHIR_ID.match(questionnaire_id):
        return None
    return session.get(StoredQuestionnaire, questionnaire_id)


def put_questionnaire(
    session: Session, questionnaire_id: str, body: Any
) -> tuple[dict[str, Any], bool]:
    """Create or replace a Questionnaire (the caller commits); (stored, created)."""
    if not FHIR_ID.match(questionnaire_id) or len(questionnaire_id) > 64:
        raise OutcomeError(bad_request("Questionnaire/<id>: not a valid FHIR id.", "id"))
    if not isinstance(body, dict) or body.get("resourceType") != "Questionnaire":
        raise OutcomeError(bad_request("The body must be a Questionnaire.", "resourceType"))
    if body.get("id") != questionnaire_id:
        raise OutcomeError(
            bad_request("The Questionnaire's id must be the one in the URL.", "Questionnaire.id")
        )
    check_questionnaire(body)
    row = session.get(StoredQuestionnaire, questionnaire_id)
    now = utcnow()
    version_id = 1 if row is None else row.version_id + 1
    meta = {k: v for k, v in (body.get("meta") or {}).items() if k not in ("versionId",)}
    stored = {
        **body,
        "meta": {**meta, "versionId": str(version_id), "lastUpdated": fhir_instant(now)},
    }
    url, version = body.get("url"), body.get("version")
    values = {
        "url": url if isinstance(url, str) else None,
        "version": version if isinstance(version, str) else None,
        "status": str(body.get("status") or "unknown"),
        "resource": stored,
        "version_id": version_id,
        "updated_at": now,
    }
    if row is None:
        session.add(StoredQuestionnaire(id=questionnaire_id, **values))
    else:
        for key, value in values.items():
            setattr(row, key, value)
    session.flush()
    return stored, row is None


def read_questionnaire(session: Session, questionnaire_id: str) -> dict[str, Any]:
    check_id("Questionnaire", questionnaire_id)
    row = session.get(StoredQuestionnaire, questionnaire_id)
    if row is None:
        raise OutcomeError(not_found(f"Questionnaire/{questionnaire_id} is not known."))
    return dict(row.resource)


def delete_questionnaire(session: Session, questionnaire_id: str) -> None:
    """Delete a Questionnaire (the caller commits); deleting one not stored is no error."""
    row = _stored(session, questionnaire_id)
    if row is not None:
        session.delete(row)
        session.flush()


def _value_of(row: StoredQuestionnaire, param: str) -> Any:
    return row.id if param == "_id" else row.updated_at


def _criterion(
    _session: Session, name: str, _modifier: str | None, raw: str
) -> ColumnElement[bool]:
    values = split_or(raw)
    if name == "_id":
        return StoredQuestionnaire.id.in_(values)
    if name == "url":
        return StoredQuestionnaire.url.in_(values)
    if name == "version":
        return StoredQuestionnaire.version.in_([parse_token(v).code for v in values])
    if name == "status":
        return StoredQuestionnaire.status.in_([parse_token(v).code for v in values])
    ranges = [parse_date(v, name) for v in values]
    return or_(*(date_condition(StoredQuestionnaire.updated_at, r, as_date=False) for r in ranges))


QUESTIONNAIRE_KEYSET = Keyset(
    path="Questionnaire",
    rows=lambda: select(StoredQuestionnaire),
    supported=SUPPORTED,
    sortable=SORTABLE,
    criterion=_criterion,
    sort=_SORT,
    value_of=_value_of,
    render=lambda row: dict(row.resource),
)
search_questionnaires = QUESTIONNAIRE_KEYSET.search
