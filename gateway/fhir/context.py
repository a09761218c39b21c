"""Per-request values the FHIR routers hand to the operations."""

from __future__ import annotations

from starlette.requests import Request

from gateway.deps import gateway_state
from gateway.fhir.http import strict_handling
from gateway.operations.search_patient import SearchContext


def search_context(request: Request) -> SearchContext:
    state = gateway_state(request)
    return SearchContext(
        base=state.base_url(request),
        secret=state.secret_key,
        strict=strict_handling(request),
        default_count=state.default_page_size,
        max_count=state.max_page_size,
    )


def fhir_extra(resource_type: str, kind: str, name: str) -> dict[str, object]:
    """Marks a route for the CapabilityStatement (``kind``: interaction | operation)."""
    return {"x-fhir": {"type": resource_type, "kind": kind, "name": name}}
