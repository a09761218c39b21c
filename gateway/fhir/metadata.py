"""``GET /fhir/metadata``: the CapabilityStatement, and the OperationDefinitions of
askonce's own operations (no token needed for either, as FHIR expects)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response

from gateway.deps import StateDep
from gateway.fhir.context import fhir_extra
from gateway.fhir.http import MediaType, fhir_response
from gateway.operations.capability import capability_statement
from gateway.operations.merge import UNMERGE_DEFINITION
from gateway.outcomes import OutcomeError, not_found

router = APIRouter(prefix="/fhir", tags=["metadata"])


def fhir_marks(app: FastAPI) -> list[dict[str, str]]:
    """The ``x-fhir`` marks of the app's registered routes, read from its OpenAPI
    document (the public view of every route, however routers are nested)."""
    paths: dict[str, dict[str, Any]] = app.openapi().get("paths", {})
    return [
        operation["x-fhir"]
        for item in paths.values()
        for operation in item.values()
        if isinstance(operation, dict) and "x-fhir" in operation
    ]


@router.get(
    "/metadata",
    summary="CapabilityStatement",
    responses={200: {"content": {"application/fhir+json": {}}, "description": "FHIR JSON"}},
)
def metadata(request: Request, state: StateDep, media: MediaType) -> Response:
    app = request.app
    statement = capability_statement(
        fhir_marks(app),
        base=state.base_url(request),
        software=app.title,
        version=app.version,
        date=state.started_at,
    )
    return fhir_response(statement, media)


#: The operations askonce defines itself (the others are defined by FHIR and its IGs).
OWN_DEFINITIONS = {UNMERGE_DEFINITION["id"]: UNMERGE_DEFINITION}


@router.get(
    "/OperationDefinition/{definition_id}",
    summary="Read the definition of an operation askonce defines (Patient-unmerge)",
    responses={200: {"content": {"application/fhir+json": {}}, "description": "FHIR JSON"}},
    openapi_extra=fhir_extra("OperationDefinition", "interaction", "read"),
)
def operation_definition(definition_id: str, media: MediaType) -> Response:
    definition = OWN_DEFINITIONS.get(definition_id)
    if definition is None:
        raise OutcomeError(
            not_found(f"OperationDefinition/{definition_id[:64]} is not defined by askonce.")
        )
    return fhir_response(definition, media)
