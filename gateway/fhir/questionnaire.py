"""Questionnaire routes: the SDC round trip of a portal's form.

- ``Questionnaire/$populate``: a QuestionnaireResponse from the golden record;
- ``QuestionnaireResponse/$extract``: resources from a completed form (writes nothing);
- ``POST QuestionnaireResponse``: a portal submits a completed form, whose answers reach
  the golden record as what the patient confirmed; ``GET QuestionnaireResponse/{id}``
  reads it back, ``GET QuestionnaireResponse?…`` searches them.

Thin adapters: each reads the body, calls its operation (:mod:`gateway.operations.populate`,
:mod:`~gateway.operations.extract`, :mod:`~gateway.operations.forms`) in the thread pool
(FHIRPath evaluation and the pipeline are CPU work), audits what it disclosed or changed
and renders the result.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.audit import audited
from gateway.auth.tokens import Principal
from gateway.deps import AuditDep, PatientRead, PrincipalDep, SessionDep, StateDep, require
from gateway.fhir.context import fhir_extra, searched
from gateway.fhir.http import (
    MediaType,
    etag,
    fhir_response,
    prefers,
    read_json_body,
)
from gateway.operations.bundle import disclosed
from gateway.operations.extract import extract
from gateway.operations.forms import (
    FORM_SEARCH_PARAMS,
    Submitted,
    read_form,
    search_forms,
    submit_form,
)
from gateway.operations.populate import SearchLimits, populate
from gateway.operations.questionnaires import (
    QUESTIONNAIRE_SEARCH_PARAMS,
    StoredForms,
    delete_questionnaire,
    put_questionnaire,
    read_questionnaire,
    search_questionnaires,
)
from gateway.state import GatewayState
from store.types import utcnow

router = APIRouter(prefix="/fhir", tags=["Questionnaire"])
FormCreate = Annotated[Principal, Depends(require("QuestionnaireResponse", "c"))]
FormRead = Annotated[Principal, Depends(require("QuestionnaireResponse", "r"))]
FormSearch = Annotated[Principal, Depends(require("QuestionnaireResponse", "s"))]
QuestionnaireWrite = Annotated[Principal, Depends(require("Questionnaire", "u"))]
QuestionnaireDelete = Annotated[Principal, Depends(require("Questionnaire", "d"))]
QuestionnaireRead = Annotated[Principal, Depends(require("Questionnaire", "r"))]
QuestionnaireSearch = Annotated[Principal, Depends(require("Questionnaire", "s"))]
PARAMETERS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/fhir+json": {}},
        "description": "A Parameters resource: response (a QuestionnaireResponse) and issues",
    }
}


def _populate_with_session(
    state: GatewayState, body: Any, base: str, principal: Principal
) -> tuple[dict[str, Any], list[str]]:
    searches = SearchLimits(
        principal.scopes.allows, state.secret_key, state.default_page_size, state.max_page_size
    )
    with state.session_factory() as session:
        return populate(
            session, body, base=base, now=utcnow(), searches=searches, forms=StoredForms(session)
        )


@router.post(
    "/Questionnaire/$populate",
    summary="Pre-fill a Questionnaire for a golden Patient (SDC $populate)",
    responses=PARAMETERS_RESPONSE,
    openapi_extra=fhir_extra("Questionnaire", "operation", "populate", body="Parameters"),
)
async def populate_route(
    request: Request, state: StateDep, principal: PatientRead, audit: AuditDep, media: MediaType
) -> Response:
    body = await read_json_body(request, state.max_body_bytes)
    with audited(audit, principal, "populate", request, "Patient") as entry:
        result, ids = await run_in_threadpool(
            _populate_with_session, state, body, state.base_url(request), principal
        )
        entry["ids"] = ids
    return fhir_response(result, media)


@router.post(
    "/QuestionnaireResponse/$extract",
    summary="Resources from a completed form (SDC $extract, definition-based)",
    responses={200: {"content": {"application/fhir+json": {}}, "description": "Parameters"}},
    openapi_extra=fhir_extra("QuestionnaireResponse", "operation", "extract", body="Parameters"),
)
async def extract_route(
    request: Request, state: StateDep, principal: PrincipalDep, media: MediaType
) -> Response:
    """Writes nothing, and reads only the stored Questionnaires: the answers come in,
    resources go out."""
    body = await read_json_body(request, state.max_body_bytes)
    return fhir_response(await run_in_threadpool(_extract_with_session, state, body), media)


def _extract_with_session(state: GatewayState, body: Any) -> dict[str, Any]:
    with state.session_factory() as session:
        return extract(body, StoredForms(session))


def _submit_with_session(
    state: GatewayState, body: Any, base: str, principal: Principal
) -> Submitted:
    with state.session_factory() as session:
        submitted = submit_form(session, body, base=base, client_id=principal.client_id)
        session.commit()
    return submitted


@router.post(
    "/QuestionnaireResponse",
    status_code=201,
    summary="Submit a completed form: its answers reach the golden record (SDC Form Receiver)",
    responses={201: {"content": {"application/fhir+json": {}}, "description": "Created"}},
    openapi_extra=fhir_extra(
        "QuestionnaireResponse", "interaction", "create", body="QuestionnaireResponse"
    ),
)
async def submit_route(
    request: Request, state: StateDep, principal: FormCreate, audit: AuditDep, media: MediaType
) -> Response:
    body = await read_json_body(request, state.max_body_bytes)
    with audited(
        audit, principal, "form-submit", request, "QuestionnaireResponse", status=201
    ) as entry:
        submitted = await run_in_threadpool(
            _submit_with_session, state, body, state.base_url(request), principal
        )
        entry["ids"] = [submitted.golden_id]
    form_id = submitted.resource["id"]
    headers = {
        "Location": f"{state.base_url(request)}/fhir/QuestionnaireResponse/{form_id}/_history/1",
        "ETag": etag(1),
        "Last-Modified": submitted.resource["meta"]["lastUpdated"],
    }
    if prefers(request, "return=minimal"):
        return Response(status_code=201, headers=headers)
    body_out = submitted.outcome() if prefers(request, "return=operationoutcome") else None
    return fhir_response(body_out or submitted.resource, media, status=201, headers=headers)


@router.get(
    "/QuestionnaireResponse",
    summary="Search the forms portals submitted (by subject, questionnaire, authored, status)",
    responses={200: {"content": {"application/fhir+json": {}}, "description": "searchset"}},
    openapi_extra=fhir_extra(
        "QuestionnaireResponse", "interaction", "search-type", search=FORM_SEARCH_PARAMS
    ),
)
def search_forms_route(
    request: Request,
    session: SessionDep,
    principal: FormSearch,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    with audited(audit, principal, "search", request, "QuestionnaireResponse") as entry:
        bundle = searched(request, session, search_forms)
        entry.update(disclosed(bundle))
    return fhir_response(bundle, media)


def _read_with_session(state: GatewayState, form_id: str) -> dict[str, Any]:
    with state.session_factory() as session:
        return dict(read_form(session, form_id).resource)


@router.get(
    "/QuestionnaireResponse/{form_id}",
    summary="Read a submitted form",
    responses={200: {"content": {"application/fhir+json": {}}, "description": "The form"}},
    openapi_extra=fhir_extra("QuestionnaireResponse", "interaction", "read"),
)
async def read_form_route(
    form_id: str,
    request: Request,
    state: StateDep,
    principal: FormRead,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    with audited(audit, principal, "read", request, "QuestionnaireResponse", form_id):
        resource = await run_in_threadpool(_read_with_session, state, form_id)
    return fhir_response(resource, media, headers={"ETag": etag(1)})


# --- the stored Questionnaires -----------------------------------------------------------


@router.put(
    "/Questionnaire/{questionnaire_id}",
    summary="Store a Questionnaire (create or replace), for the SDC operations to name",
    responses={
        200: {"content": {"application/fhir+json": {}}, "description": "Replaced"},
        201: {"content": {"application/fhir+json": {}}, "description": "Created"},
    },
    openapi_extra=fhir_extra("Questionnaire", "interaction", "update", body="Questionnaire"),
)
async def put_questionnaire_route(
    questionnaire_id: str,
    request: Request,
    state: StateDep,
    principal: QuestionnaireWrite,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    body = await read_json_body(request, state.max_body_bytes)

    def store() -> tuple[dict[str, Any], bool]:
        with state.session_factory() as session:
            stored, created = put_questionnaire(session, questionnaire_id, body)
            session.commit()
        return stored, created

    with audited(audit, principal, "update", request, "Questionnaire", questionnaire_id[:64]):
        stored, created = await run_in_threadpool(store)
    version = int(stored["meta"]["versionId"])
    headers = {"ETag": etag(version), "Last-Modified": stored["meta"]["lastUpdated"]}
    if created:
        headers["Location"] = (
            f"{state.base_url(request)}/fhir/Questionnaire/{questionnaire_id}/_history/{version}"
        )
    return fhir_response(stored, media, status=201 if created else 200, headers=headers)


@router.get(
    "/Questionnaire/{questionnaire_id}",
    summary="Read a stored Questionnaire",
    responses={200: {"content": {"application/fhir+json": {}}, "description": "The form"}},
    openapi_extra=fhir_extra("Questionnaire", "interaction", "read"),
)
def read_questionnaire_route(
    questionnaire_id: str, session: SessionDep, principal: QuestionnaireRead, media: MediaType
) -> Response:
    stored = read_questionnaire(session, questionnaire_id)
    return fhir_response(stored, media, headers={"ETag": etag(int(stored["meta"]["versionId"]))})


@router.delete(
    "/Questionnaire/{questionnaire_id}",
    status_code=204,
    summary="Delete a stored Questionnaire",
    openapi_extra=fhir_extra("Questionnaire", "interaction", "delete"),
)
def delete_questionnaire_route(
    questionnaire_id: str,
    request: Request,
    session: SessionDep,
    principal: QuestionnaireDelete,
    audit: AuditDep,
) -> Response:
    with audited(audit, principal, "delete", request, "Questionnaire", questionnaire_id[:64]):
        delete_questionnaire(session, questionnaire_id)
        session.commit()
    return Response(status_code=204)


@router.get(
    "/Questionnaire",
    summary="Search the stored Questionnaires (url, version, status)",
    responses={200: {"content": {"application/fhir+json": {}}, "description": "searchset"}},
    openapi_extra=fhir_extra(
        "Questionnaire", "interaction", "search-type", search=QUESTIONNAIRE_SEARCH_PARAMS
    ),
)
def search_questionnaires_route(
    request: Request, session: SessionDep, principal: QuestionnaireSearch, media: MediaType
) -> Response:
    return fhir_response(searched(request, session, search_questionnaires), media)
