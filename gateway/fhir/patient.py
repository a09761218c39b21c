"""Patient routes: read, vread, history, search, ``$match``, ``$everything``, ``$merge``
and ``$unmerge``.

Thin adapters: each parses the request, calls one operation from
:mod:`gateway.operations`, audits the disclosure and renders the result.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.audit import audited
from gateway.auth.tokens import Principal
from gateway.deps import (
    BEARER_SECURITY,
    AuditDep,
    PatientRead,
    PatientSearch,
    SessionDep,
    StateDep,
    authorize_inline,
    require,
)
from gateway.fhir.context import check_included, fhir_extra, read_shape, search_context
from gateway.fhir.http import (
    MediaType,
    check_preconditions,
    etag,
    fhir_response,
    negotiate,
    not_modified,
    query_items,
    read_json_body,
)
from gateway.operations.bundle import disclosed, shape
from gateway.operations.everything import everything, everything_scope
from gateway.operations.match import match
from gateway.operations.merge import MergeResult, merge, unmerge
from gateway.operations.params import parse_shape
from gateway.operations.read import (
    HistoryPage,
    check_history_params,
    history_patient,
    history_patients,
    vread_patient,
)
from gateway.operations.search_patient import (
    PATIENT_SEARCH_PARAMS,
    SearchContext,
    search_patients,
)
from gateway.state import GatewayState

router = APIRouter(prefix="/fhir", tags=["Patient"])
EverythingReader = Annotated[Principal, Depends(require("Encounter", "s"))]
PatientUpdate = Annotated[Principal, Depends(require("Patient", "u"))]
BUNDLE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/fhir+json": {}}, "description": "A FHIR Bundle"}
}
PARAMETERS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/fhir+json": {}},
        "description": "A FHIR Parameters: input, outcome and result",
    }
}
RESOURCE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/fhir+json": {}}, "description": "A FHIR Patient"},
    304: {"description": "Not modified (If-None-Match)"},
}


def _search_with_session(
    state: GatewayState, items: list[tuple[str, str]], ctx: SearchContext
) -> dict[str, Any]:
    with state.session_factory() as session:
        return search_patients(session, items, ctx)


@router.get(
    "/Patient",
    summary="Search golden Patients",
    responses=BUNDLE_RESPONSE,
    openapi_extra=fhir_extra(
        "Patient",
        "interaction",
        "search-type",
        search={**PATIENT_SEARCH_PARAMS, "_revinclude": ("string", "Encounter:subject")},
    ),
)
async def search(
    request: Request,
    state: StateDep,
    principal: PatientSearch,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    # async route, no sync dependencies: the search itself is the one thread-pool hop.
    with audited(audit, principal, "search", request, "Patient") as entry:
        items = query_items(request)
        check_included(principal, "Patient", items)
        bundle = await run_in_threadpool(
            _search_with_session, state, items, search_context(request)
        )
        entry.update(disclosed(bundle))
    return fhir_response(bundle, media)


@router.post(
    "/Patient/_search",
    summary="Search golden Patients (form POST)",
    responses=BUNDLE_RESPONSE,
    openapi_extra=fhir_extra("Patient", "interaction", "search-type"),
)
async def search_post(
    request: Request, state: StateDep, principal: PatientSearch, audit: AuditDep, media: MediaType
) -> Response:
    form = await request.form()
    items = query_items(request) + [(k, str(v)) for k, v in form.multi_items() if k != "_format"]
    with (
        state.session_factory() as session,
        audited(audit, principal, "search", request, "Patient") as entry,
    ):
        check_included(principal, "Patient", items)
        bundle = search_patients(session, items, search_context(request))
        entry.update(disclosed(bundle))
    return fhir_response(bundle, media)


def _history_page(
    request: Request,
    state: StateDep,
    count: Annotated[int | None, Query(alias="_count", ge=1)] = None,
    cursor: Annotated[str | None, Query(alias="_cursor")] = None,
    since: Annotated[str | None, Query(alias="_since")] = None,
) -> HistoryPage:
    """The page a ``_history`` request asks for; 400 for ``_at`` or ``_list``, or an invalid
    ``_summary`` or ``_elements``."""
    check_history_params(request.query_params)
    shaped = parse_shape(query_items(request), countable=True)
    return HistoryPage(
        base=state.base_url(request),
        count=min(count or state.default_page_size, state.max_page_size),
        cursor=cursor,
        secret=state.secret_key,
        since=since,
        counted=shaped.summary_count,
        elements=tuple(shaped.elements),
        summary=shaped.summary,
    )


HistoryAsked = Annotated[HistoryPage, Depends(_history_page)]


@router.get(
    "/Patient/_history",
    summary="Every version of every golden Patient, newest first (deletions included)",
    responses=BUNDLE_RESPONSE,
    openapi_extra=fhir_extra("Patient", "interaction", "history-type", shaped=True),
)
def type_history(
    request: Request,
    session: SessionDep,
    principal: PatientSearch,
    audit: AuditDep,
    media: MediaType,
    asked: HistoryAsked,
) -> Response:
    # A search of every record's versions: the search scope (SMART's "s" covers
    # history-type), each disclosed record in the audit row.
    with audited(audit, principal, "history", request, "Patient") as entry:
        bundle, ids = history_patients(session, asked)
        entry["ids"] = ids
    return fhir_response(bundle, media)


@router.post(
    "/Patient/$match",
    summary="Find golden Patients matching a Patient (mpi scores)",
    responses=BUNDLE_RESPONSE,
    openapi_extra=fhir_extra("Patient", "operation", "match", body="Parameters"),
)
async def match_route(
    request: Request, state: StateDep, principal: PatientSearch, audit: AuditDep, media: MediaType
) -> Response:
    body = await read_json_body(request, state.max_body_bytes)
    matcher, parser = state.matcher, state.patient_parser
    with (
        state.session_factory() as session,
        audited(audit, principal, "match", request, "Patient") as entry,
    ):
        bundle = match(
            session, body, base=state.base_url(request), matcher=matcher, parse_patient=parser
        )
        entry.update(disclosed(bundle))
    return fhir_response(bundle, media)


async def _merging(
    request: Request,
    state: GatewayState,
    principal: Principal,
    audit: AuditDep,
    media: str,
    action: str,
) -> Response:
    """``$merge`` or ``$unmerge``: one transaction, committed unless it was a preview."""
    body = await read_json_body(request, state.max_body_bytes)
    operation = merge if action == "merge" else unmerge
    with (
        state.session_factory() as session,
        audited(audit, principal, action, request, "Patient") as entry,
    ):
        result: MergeResult = operation(
            session, body, base=state.base_url(request), actor=principal.client_id
        )
        if result.preview:
            session.rollback()
        else:
            session.commit()
        entry["ids"] = [result.source_id, result.target_id]
    return fhir_response(result.parameters, media)


@router.post(
    "/Patient/$merge",
    summary="Merge a golden Patient into another (preview=true changes nothing)",
    responses=PARAMETERS_RESPONSE,
    openapi_extra=fhir_extra("Patient", "operation", "merge", body="Parameters"),
)
async def merge_route(
    request: Request, state: StateDep, principal: PatientUpdate, audit: AuditDep, media: MediaType
) -> Response:
    return await _merging(request, state, principal, audit, media, "merge")


@router.post(
    "/Patient/$unmerge",
    summary="Undo the last merge of a golden Patient (preview=true changes nothing)",
    responses=PARAMETERS_RESPONSE,
    openapi_extra=fhir_extra("Patient", "operation", "unmerge", body="Parameters"),
)
async def unmerge_route(
    request: Request, state: StateDep, principal: PatientUpdate, audit: AuditDep, media: MediaType
) -> Response:
    return await _merging(request, state, principal, audit, media, "unmerge")


@router.get(
    "/Patient/{golden_id}",
    summary="Read a golden Patient",
    responses=RESOURCE_RESPONSE,
    openapi_extra={
        **fhir_extra("Patient", "interaction", "read", shaped=True),
        "security": BEARER_SECURITY,
    },
)
async def read(golden_id: str, request: Request) -> Response:
    # The hot path: no dependencies (authorization, negotiation inline), the one indexed
    # SELECT runs on the event loop (gateway.reads) and the audit row is queued.
    principal = authorize_inline(request, "Patient", "r")
    media = negotiate(request)
    app_state = request.app.state
    with audited(app_state.audit, principal, "read", request, "Patient", golden_id):
        asked = read_shape(request)
        stored = await app_state.reader.read(golden_id)
        unchanged = check_preconditions(request, stored.version)
    if unchanged:
        return not_modified(stored.version)
    body: str | dict[str, Any]
    if asked is not None:
        body = shape(stored.as_dict(), asked.elements, asked.summary)
    else:
        body = stored.text if stored.text is not None else stored.as_dict()
    return fhir_response(body, media, headers={"ETag": etag(stored.version)})


@router.get(
    "/Patient/{golden_id}/_history/{version_id}",
    summary="Read one version of a golden Patient",
    responses=RESOURCE_RESPONSE,
    openapi_extra=fhir_extra("Patient", "interaction", "vread", shaped=True),
)
def vread(
    golden_id: str,
    version_id: str,
    request: Request,
    session: SessionDep,
    principal: PatientRead,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    with audited(audit, principal, "vread", request, "Patient", golden_id):
        asked = read_shape(request)
        stored = vread_patient(session, golden_id, version_id)
        unchanged = check_preconditions(request, stored.version)
    if unchanged:
        return not_modified(stored.version)
    body = stored.as_dict()
    if asked is not None:
        body = shape(body, asked.elements, asked.summary)
    return fhir_response(body, media, headers={"ETag": etag(stored.version)})


@router.get(
    "/Patient/{golden_id}/_history",
    summary="Every version of a golden Patient, newest first",
    responses=BUNDLE_RESPONSE,
    openapi_extra=fhir_extra("Patient", "interaction", "history-instance", shaped=True),
)
def history(
    golden_id: str,
    request: Request,
    session: SessionDep,
    principal: PatientRead,
    audit: AuditDep,
    media: MediaType,
    asked: HistoryAsked,
) -> Response:
    with audited(audit, principal, "history", request, "Patient", golden_id):
        bundle = history_patient(session, golden_id, asked)
    return fhir_response(bundle, media)


@router.get(
    "/Patient/{golden_id}/$everything",
    summary="The golden Patient, its encounters, its submitted forms and its provenance",
    responses=BUNDLE_RESPONSE,
    openapi_extra=fhir_extra("Patient", "operation", "everything"),
)
def everything_route(
    golden_id: str,
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: PatientRead,
    audit: AuditDep,
    _encounters: EverythingReader,
    media: MediaType,
    count: Annotated[int | None, Query(alias="_count", ge=1)] = None,
    cursor: Annotated[str | None, Query(alias="_cursor")] = None,
    types: Annotated[
        list[str] | None,
        Query(alias="_type", description="Resource types to return (comma-separated)"),
    ] = None,
    since: Annotated[
        str | None, Query(alias="_since", description="Only resources changed at or after")
    ] = None,
    start: Annotated[
        str | None, Query(description="Care date start: encounters ending on or after it")
    ] = None,
    end: Annotated[
        str | None, Query(description="Care date end: encounters starting on or before it")
    ] = None,
) -> Response:
    with audited(audit, principal, "everything", request, "Patient", golden_id) as entry:
        scope = everything_scope(types or [], since, start, end)
        bundle, ids = everything(
            session,
            golden_id,
            base=state.base_url(request),
            secret=state.secret_key,
            count=min(count or state.default_page_size, state.max_page_size),
            cursor=cursor,
            forms=principal.scopes.allows("QuestionnaireResponse", "r"),
            scope=scope,
        )
        entry["ids"] = ids
    return fhir_response(bundle, media)
