"""HTTP helpers for the FHIR routers: content negotiation, responses, bodies, ETags.

https://hl7.org/fhir/R4/http.html#mime-type: ``application/fhir+json`` and
``application/json`` are served (``_format`` overrides ``Accept``); XML is not,
so asking only for it gets 406. ETags are weak, ``W/"<versionId>"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import Request
from starlette.responses import Response

from gateway.outcomes import (
    FHIR_JSON,
    OutcomeError,
    bad_request,
    not_acceptable,
    precondition_failed,
    too_large,
    unsupported_media_type,
)

JSON = "application/json"
_FORMATS = {
    "json": FHIR_JSON,
    FHIR_JSON: FHIR_JSON,
    JSON: JSON,
    "application/json+fhir": FHIR_JSON,
    "text/json": JSON,
}
_WILDCARDS = frozenset({"*/*", "application/*"})
BODY_TYPES = frozenset({FHIR_JSON, JSON, "application/json+fhir"})


def negotiate(request: Request) -> str:
    """The media type to answer with, or 406 when only formats we lack are acceptable."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        media = _FORMATS.get(fmt.split(";")[0].strip().lower())
        if media is None:
            raise OutcomeError(not_acceptable("Only JSON is served (_format=json)."))
        return media
    accept = request.headers.get("accept")
    if not accept:
        return FHIR_JSON
    offered = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    if FHIR_JSON in offered or "application/json+fhir" in offered:
        return FHIR_JSON
    if JSON in offered:
        return JSON
    if any(o in _WILDCARDS for o in offered):
        return FHIR_JSON
    raise OutcomeError(
        not_acceptable("Only application/fhir+json and application/json are served.")
    )


async def negotiated(request: Request) -> str:
    """:func:`negotiate` as a dependency (async: no I/O, so no thread-pool hop)."""
    return negotiate(request)


#: A route parameter: the negotiated media type of the answer (:func:`negotiated`).
MediaType = Annotated[str, Depends(negotiated)]


def etag(version: int) -> str:
    return f'W/"{version}"'


def _tags(header: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


def check_preconditions(request: Request, version: int) -> bool:
    """Apply ``If-Match`` (412 on mismatch); True when ``If-None-Match`` says not modified."""
    strong = f'"{version}"'
    if_match = request.headers.get("if-match")
    if if_match is not None and "*" not in _tags(if_match) and strong not in _tags(if_match):
        raise OutcomeError(precondition_failed(f"The current version is {version}."))
    if_none_match = request.headers.get("if-none-match")
    return if_none_match is not None and (
        strong in _tags(if_none_match) or "*" in _tags(if_none_match)
    )


def fhir_response(
    body: dict[str, Any] | str,
    media_type: str,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    content = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    return Response(content.encode(), status_code=status, media_type=media_type, headers=headers)


def not_modified(version: int) -> Response:
    return Response(status_code=304, headers={"ETag": etag(version)})


#: ``\u0000`` in a JSON text (an escaped backslash before it, ``\\u0000``, is no NUL).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


async def read_json_body(request: Request, limit: int) -> Any:
    """The request's JSON body: 415 if not JSON, 413 over ``limit`` bytes, 400 if malformed."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in BODY_TYPES:
        raise OutcomeError(unsupported_media_type("Send application/fhir+json."))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OutcomeError(too_large(f"The body exceeds {limit} bytes."))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise OutcomeError(too_large(f"The body exceeds {limit} bytes."))
        chunks.append(chunk)
    body = b"".join(chunks)
    if _NUL_ESCAPE.search(body):
        raise OutcomeError(
            bad_request("The body holds a NUL character (\\u0000), which FHIR strings exclude.")
        )
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutcomeError(bad_request("The body is not valid JSON.")) from exc


def prefers(request: Request, token: str) -> bool:
    """Whether the ``Prefer`` header (RFC 7240) carries ``token`` (``respond-async``,
    ``handling=strict``…), case-insensitively, among its comma- or semicolon-separated
    preferences."""
    prefer = request.headers.get("prefer", "")
    return token in {t.strip().lower() for part in prefer.split(",") for t in part.split(";")}


def strict_handling(request: Request) -> bool:
    """``Prefer: handling=strict`` (https://hl7.org/fhir/R4/search.html#errors)."""
    return prefers(request, "handling=strict")


def query_items(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k != "_format"]


def known_params_only(request: Request, known: Iterable[str]) -> list[tuple[str, str]]:
    """The search's parameters; one not in ``known`` is refused under ``Prefer:
    handling=strict`` and ignored otherwise, as FHIR searches do."""
    items = query_items(request)
    unknown = sorted({k for k, _ in items} - set(known))
    if unknown and strict_handling(request):
        raise OutcomeError(bad_request(f"Unknown search parameter: {unknown[0]}.", unknown[0]))
    return items
