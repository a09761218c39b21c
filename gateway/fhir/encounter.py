"""Encounter routes: search (by golden patient, date, status, class) and read."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.audit import audited
from gateway.auth.tokens import Principal
from gateway.deps import AuditDep, EncounterSearch, SessionDep, require
from gateway.fhir.context import check_included, fhir_extra, read_shape, searched
from gateway.fhir.http import MediaType, fhir_response, query_items
from gateway.operations.bundle import disclosed, shape
from gateway.operations.encounters import (
    ENCOUNTER_SEARCH_PARAMS,
    read_encounter,
    search_encounters,
)

router = APIRouter(prefix="/fhir", tags=["Encounter"])
EncounterRead = Annotated[Principal, Depends(require("Encounter", "r"))]
FHIR_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/fhir+json": {}}, "description": "FHIR JSON"}
}


@router.get(
    "/Encounter",
    summary="Search encounters across every source linked to a golden Patient",
    responses=FHIR_RESPONSE,
    openapi_extra=fhir_extra(
        "Encounter",
        "interaction",
        "search-type",
        search={
            **ENCOUNTER_SEARCH_PARAMS,
            "_include": ("string", "Encounter:subject: the golden Patients, in the same Bundle"),
        },
    ),
)
def search(
    request: Request,
    session: SessionDep,
    principal: EncounterSearch,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    with audited(audit, principal, "search", request, "Encounter") as entry:
        check_included(principal, "Encounter", query_items(request))
        bundle = searched(request, session, search_encounters)
        entry.update(disclosed(bundle))
    return fhir_response(bundle, media)


@router.get(
    "/Encounter/{encounter_id}",
    summary="Read an encounter",
    responses=FHIR_RESPONSE,
    openapi_extra=fhir_extra("Encounter", "interaction", "read", shaped=True),
)
def read(
    encounter_id: str,
    request: Request,
    session: SessionDep,
    principal: EncounterRead,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    with audited(audit, principal, "read", request, "Encounter", encounter_id):
        asked = read_shape(request)
        resource = read_encounter(session, encounter_id)
    if asked is not None:
        resource = shape(resource, asked.elements, asked.summary)
    return fhir_response(resource, media)
