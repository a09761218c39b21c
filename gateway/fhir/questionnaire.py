"""Questionnaire routes: SDC ``$populate`` (a QuestionnaireResponse from the golden record).

A thin adapter: it reads the Parameters body, calls :func:`gateway.operations.populate.populate`
in the thread pool (FHIRPath evaluation is CPU work), audits the disclosure (the golden ids
whose data filled the answers) and renders the result.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.audit import audited
from gateway.auth.tokens import Principal
from gateway.deps import AuditDep, PatientRead, StateDep
from gateway.fhir.context import fhir_extra
from gateway.fhir.http import MediaType, fhir_response, read_json_body
from gateway.operations.populate import SearchLimits, populate
from gateway.state import GatewayState
from store.types import utcnow

router = APIRouter(prefix="/fhir", tags=["Questionnaire"])
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
        return populate(session, body, base=base, now=utcnow(), searches=searches)


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
