"""``GET /fhir/metadata``: the CapabilityStatement (no token needed, as FHIR expects)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from gateway.deps import StateDep
from gateway.fhir.http import fhir_response, negotiate
from gateway.operations.capability import capability_statement

router = APIRouter(prefix="/fhir", tags=["metadata"])
MediaType = Annotated[str, Depends(negotiate)]


def fhir_marks(routes: list[Any]) -> list[dict[str, str]]:
    """The ``x-fhir`` marks of the app's registered routes."""
    return [
        route.openapi_extra["x-fhir"]
        for route in routes
        if isinstance(route, APIRoute) and route.openapi_extra and "x-fhir" in route.openapi_extra
    ]


@router.get(
    "/metadata",
    summary="CapabilityStatement",
    responses={200: {"content": {"application/fhir+json": {}}, "description": "FHIR JSON"}},
)
def metadata(request: Request, state: StateDep, media: MediaType) -> Response:
    app = request.app
    statement = capability_statement(
        fhir_marks(app.routes),
        base=state.base_url(request),
        software=app.title,
        version=app.version,
        date=state.started_at,
    )
    return fhir_response(statement, media)
