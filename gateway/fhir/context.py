"""Per-request values the FHIR routers hand to the operations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session
from starlette.requests import Request

from gateway.auth.tokens import Principal
from gateway.deps import check_scope, state_of
from gateway.fhir.http import query_items, strict_handling
from gateway.operations.includes import other_types
from gateway.operations.params import SearchRequest, parse_shape
from gateway.operations.search_patient import SearchContext

#: A search operation: ``(session, query items, *, base, secret, strict, default_count,
#: max_count) -> searchset Bundle`` (``search_encounters``, ``search_forms``…).
Search = Callable[..., dict[str, Any]]


def search_context(request: Request) -> SearchContext:
    state = state_of(request)
    return SearchContext(
        base=state.base_url(request),
        secret=state.secret_key,
        strict=strict_handling(request),
        default_count=state.default_page_size,
        max_count=state.max_page_size,
    )


def searched(request: Request, session: Session, search: Search) -> dict[str, Any]:
    """Run ``search`` on the request's query with the server's paging and handling."""
    ctx = search_context(request)
    return search(
        session,
        query_items(request),
        base=ctx.base,
        secret=ctx.secret,
        strict=ctx.strict,
        default_count=ctx.default_count,
        max_count=ctx.max_count,
    )


def check_included(
    principal: Principal, resource_type: str, items: Sequence[tuple[str, str]]
) -> None:
    """403 unless ``principal`` may search every other type a search of ``resource_type``
    with the query reads (``_include``, ``_revinclude``, a chain, ``_has``), as a search of
    that type would need: no scope is bypassed through another type's search."""
    for added in other_types(resource_type, items):
        check_scope(principal, added, "s")


def fhir_extra(
    resource_type: str,
    kind: str,
    name: str,
    *,
    search: dict[str, tuple[str, str]] | None = None,
    shaped: bool = False,
    body: str | None = None,
) -> dict[str, object]:
    """OpenAPI extras of a FHIR route: the ``x-fhir`` mark the CapabilityStatement is built
    from (``kind``: interaction | operation), the search parameters it reads from the query
    string (``shaped``: a read's ``_elements`` and ``_summary``), and the FHIR JSON body it
    takes (``body``: the resource type)."""
    extra: dict[str, object] = {"x-fhir": {"type": resource_type, "kind": kind, "name": name}}
    params = {**search, **CONTROL_DOCS} if search is not None else {}
    if shaped:
        params.update(SHAPE_DOCS)
    if params:
        extra["parameters"] = [
            {
                "name": param,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": f"{kind_}: {doc}",
            }
            for param, (kind_, doc) in params.items()
        ]
    if body is not None:
        extra["requestBody"] = {
            "required": True,
            "content": {
                "application/fhir+json": {
                    "schema": {
                        "type": "object",
                        "required": ["resourceType"],
                        "properties": {"resourceType": {"type": "string", "enum": [body]}},
                    }
                }
            },
        }
    return extra


CONTROL_DOCS: dict[str, tuple[str, str]] = {
    "_count": ("number", "Page size (capped at the server maximum)"),
    "_sort": ("string", "Sort order, e.g. -_lastUpdated"),
    "_summary": ("string", "count: only the total; true, text or data: each match cut down"),
    "_elements": ("string", "Comma-separated top-level elements to return"),
    "_format": ("string", "json, application/fhir+json or application/json"),
    "_cursor": ("string", "Opaque paging position (follow next links verbatim)"),
    "_total": ("string", "accurate or estimate: the Bundle's total (a count); none: no total"),
}
SHAPE_DOCS: dict[str, tuple[str, str]] = {
    "_summary": ("string", "true (the summary elements), text or data"),
    "_elements": CONTROL_DOCS["_elements"],
}


def read_shape(request: Request) -> SearchRequest | None:
    """The ``_elements`` or ``_summary`` a read asks for; None when it asks for neither
    (the read's hot path then sends the stored text as is). 400 when invalid."""
    params = request.query_params
    if "_elements" not in params and "_summary" not in params:
        return None
    return parse_shape(query_items(request))
