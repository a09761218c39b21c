"""Bulk Data ``$export`` routes: kick-off, status, files, cancellation.

A thin adapter over :mod:`gateway.operations.export`. Files go out as stored, gzip-encoded,
to a client that accepts gzip (``Accept-Encoding``), and as plain NDJSON otherwise or for a
``Range``. The kick-off answers 202 with the
status URL in ``Content-Location`` and hands the job to a worker after the response
(:func:`queue_export`: the task queue, a worker in services mode, this process when
embedded). Every route needs the bearer token of the client that kicked the job off.
"""

from __future__ import annotations

import email.utils
import gzip
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.audit import AuditLog, audited
from gateway.auth.tokens import Principal
from gateway.deps import AuditDep, PrincipalDep, SessionDep, StateDep, check_scope
from gateway.fhir.context import fhir_extra
from gateway.fhir.http import MediaType, fhir_response, prefers, query_items, read_json_body
from gateway.operations.export import (
    ERROR,
    NDJSON,
    PATIENT,
    RETRY_AFTER_S,
    SYSTEM,
    ExportRequest,
    create_job,
    job_status,
    owned_job,
    parameters_from_body,
    parse_kickoff,
    read_file,
    redispatch,
    status_url,
    type_filter,
)
from gateway.operations.includes import other_types
from gateway.outcomes import OutcomeError, bad_request, issue, operation_outcome, outcome
from gateway.state import GatewayState
from store.types import utcnow
from sync.retention import delete_export

router = APIRouter(prefix="/fhir", tags=["Bulk Data"])
ACCEPTED_RESPONSE: dict[int | str, dict[str, Any]] = {
    202: {"description": "Accepted: poll the URL in Content-Location"}
}
STATUS_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/json": {}}, "description": "The export's manifest"},
    202: {"description": "In progress (X-Progress, Retry-After)"},
}
FILE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {NDJSON: {}}, "description": "One resource per line"}
}


def queue_export(job_id: str) -> None:
    """Run the export through the task queue (a worker in services mode, where a
    redelivered task resumes an interrupted export; in-process when embedded)."""
    from sync.tasks import run_export

    run_export.apply_async(kwargs={"job_id": job_id})


def _trigger(state: GatewayState) -> Callable[[str], None]:
    return state.export_trigger or queue_export


def _readable(principal: Principal) -> Callable[[str], bool]:
    return lambda t: principal.scopes.allows(t, "r") and principal.scopes.allows(t, "s")


def _kickoff(
    request: Request,
    state: GatewayState,
    principal: Principal,
    audit: AuditLog,
    background: BackgroundTasks,
    items: list[tuple[str, str]],
    level: str,
) -> Response:
    with (
        audited(audit, principal, "export", request, None) as entry,
        state.session_factory() as session,
    ):
        if not prefers(request, "respond-async"):
            raise OutcomeError(
                bad_request("A Bulk Data kick-off needs the header Prefer: respond-async.")
            )
        export = parse_kickoff(
            items,
            level=level,
            lenient=prefers(request, "handling=lenient"),
            readable=_readable(principal),
            post=request.method == "POST",
        )
        for resource_type in export.types:
            type_filter(session, export, resource_type)  # 400 now, not a failed job later
            for items in export.filters_for(resource_type):  # a chain or _has reads a type too
                for other in other_types(resource_type, items):
                    check_scope(principal, other, "s")
        base = state.base_url(request)
        query = request.url.query
        request_url = f"{base}{request.url.path}" + (f"?{query}" if query else "")
        job_id = create_job(
            session,
            principal.client_id,
            request_url,
            export,
            now=utcnow(),
            max_active=state.export.max_active,
        )
        session.commit()
        entry.update({"job": job_id, "types": list(export.types), "level": level})
    background.add_task(_trigger(state), job_id)
    body = operation_outcome(
        [issue("informational", "The export was accepted.", severity="information")]
    )
    return fhir_response(
        body,
        "application/fhir+json",
        status=202,
        headers={"Content-Location": status_url(base, job_id)},
    )


def _kickoff_routes(path: str, level: str, resource_type: str, summary: str) -> None:
    """``GET`` (query parameters) and ``POST`` (a Parameters body) kick-offs at ``path``."""

    async def kickoff(
        request: Request,
        state: StateDep,
        principal: PrincipalDep,
        audit: AuditDep,
        background: BackgroundTasks,
        media: MediaType,
    ) -> Response:
        if request.method == "POST":
            items = parameters_from_body(await read_json_body(request, state.max_body_bytes))
        else:
            items = query_items(request)
        return await run_in_threadpool(
            _kickoff, request, state, principal, audit, background, items, level
        )

    for method, body in (("GET", None), ("POST", "Parameters")):
        router.add_api_route(
            path,
            kickoff,
            methods=[method],
            name=f"export_{level}_{method.lower()}",
            status_code=202,
            summary=summary + (" (Parameters body)" if body else ""),
            responses=ACCEPTED_RESPONSE,
            openapi_extra=fhir_extra(resource_type, "operation", "export", body=body),
        )


_kickoff_routes(
    "/$export",
    SYSTEM,
    "system",
    "Kick off a Bulk Data export of every golden Patient and Encounter",
)
_kickoff_routes(
    "/Patient/$export",
    PATIENT,
    "Patient",
    "Kick off a Bulk Data export of every Patient and their compartment (patient filter: POST)",
)


def _check_types(principal: Principal, types: tuple[str, ...]) -> None:
    """Status and file requests need the scopes the kick-off needed (Bulk Data §Security)."""
    for resource_type in types:
        check_scope(principal, resource_type, "r")
        check_scope(principal, resource_type, "s")


@router.get(
    "/bulk-export/{job_id}",
    summary="The status of a Bulk Data export: 202 while it runs, then its manifest",
    responses=STATUS_RESPONSE,
)
def export_status(
    job_id: str,
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    session: SessionDep,
    background: BackgroundTasks,
) -> Response:
    now = utcnow()
    job = owned_job(session, job_id, principal.client_id)
    _check_types(principal, ExportRequest.from_params(job.params).types)
    status = job_status(session, job, base=state.base_url(request), now=now)
    if not status.done:
        if status.redispatch and redispatch(session, job.id, now):
            session.commit()
            background.add_task(_trigger(state), job.id)
        return Response(
            status_code=202,
            headers={"X-Progress": status.progress[:100], "Retry-After": str(RETRY_AFTER_S)},
        )
    headers = {}
    if status.expires is not None:
        headers["Expires"] = email.utils.format_datetime(status.expires, usegmt=True)
    return fhir_response(status.manifest, "application/json", headers=headers)


@router.delete(
    "/bulk-export/{job_id}",
    status_code=202,
    summary="Cancel a Bulk Data export, or delete its files",
    responses=ACCEPTED_RESPONSE,
)
def export_delete(
    job_id: str, principal: PrincipalDep, session: SessionDep, media: MediaType
) -> Response:
    job = owned_job(session, job_id, principal.client_id)
    delete_export(session, job.id)
    session.commit()
    body = operation_outcome(
        [issue("informational", "The export was deleted.", severity="information")]
    )
    return fhir_response(body, media, status=202)


@router.get(
    "/bulk-export/{job_id}/{file_id}.ndjson",
    summary="One NDJSON file of a completed Bulk Data export",
    responses=FILE_RESPONSE,
)
def export_file(
    job_id: str,
    file_id: str,
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    audit: AuditDep,
) -> Response:
    with audited(audit, principal, "export-file", request, None, job_id) as entry:
        job = owned_job(session, job_id, principal.client_id)
        row = read_file(session, job, file_id, utcnow())
        if row.kind != ERROR:
            _check_types(principal, (row.resource_type,))
        entry.update(
            {"file": row.id, "kind": row.kind, "type": row.resource_type, "count": row.count}
        )
        stored = bytes(row.content_gzip)
    range_header = request.headers.get("range")
    if range_header is None and _accepts_gzip(request):
        return Response(
            stored,
            media_type=NDJSON,
            headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
        )
    return ranged(gzip.decompress(stored), range_header)


def _accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


_RANGE = re.compile(r"^bytes=(\d{1,19})-(\d{0,19})$")


def ranged(content: bytes, header: str | None) -> Response:
    """The file, or the part a ``Range: bytes=start-[end]`` asks for (RFC 9110 §14): a
    client that lost its connection resumes where it was. Other ranges get the whole.
    Ranges count the NDJSON's own bytes, so a ranged answer is never gzip-encoded."""
    size = len(content)
    match = _RANGE.match(header.strip()) if header else None
    if match is None:
        return Response(content, media_type=NDJSON, headers={"Accept-Ranges": "bytes"})
    start = int(match.group(1))
    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    if start >= size or end < start:
        raise OutcomeError(
            outcome(
                416,
                "invalid",
                f"The file has {size} bytes: the range asks for none of them.",
                headers={"Content-Range": f"bytes */{size}"},
            )
        )
    return Response(
        content[start : end + 1],
        status_code=206,
        media_type=NDJSON,
        headers={"Content-Range": f"bytes {start}-{end}/{size}", "Accept-Ranges": "bytes"},
    )
