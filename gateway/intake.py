"""Push intake: the rest-hook endpoint an EHR's FHIR Subscription notifies.

``POST /intake/{source}`` takes R4B / Subscriptions Backport notification Bundles
(handshake, heartbeat, event-notification; empty, id-only or full-resource
payloads) and R4 classic rest-hook calls (an empty ping, or the resource itself);
``PUT /intake/{source}/{type}/{id}`` is the R4 classic full-resource form.
http://hl7.org/fhir/uv/subscriptions-backport/channels.html#rest-hook,
https://hl7.org/fhir/R4/subscription.html#channels

The sender authenticates with the source's intake token as a bearer token (set it
in the Subscription's ``channel.header``). The work is :func:`sync.intake.receive_notification`;
a gap in the event numbers, or a classic ping, starts a catch-up sync after the answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from gateway.deps import StateDep
from gateway.outcomes import (
    FHIR_JSON,
    OutcomeError,
    bad_request,
    forbidden,
    issue,
    not_found,
    operation_outcome,
    unauthorized,
    unprocessable,
)
from sync.intake import IntakeDeniedError, NotificationError, receive_notification

log = logging.getLogger(__name__)
router = APIRouter(prefix="/intake", tags=["push intake"])

HTTP_UNAUTHORIZED = 401
HTTP_FORBIDDEN = 403

CatchUp = Callable[[int], None]


def queue_catch_up(source_id: int) -> None:
    """Start (or resume) a sync of the source through the task queue (in-process when
    embedded). One that fails is owed still: the scheduler's next tick tries again
    (:mod:`sync.catchup`)."""
    from sync.tasks import run_source, send_after_answer

    send_after_answer(run_source, source_id=source_id)


def catch_up_trigger() -> CatchUp:
    """The dependency that starts catch-up syncs; tests override it."""
    return queue_catch_up


CatchUpDep = Annotated[CatchUp, Depends(catch_up_trigger)]


def _bearer(request: Request) -> str | None:
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _body(request: Request) -> dict[str, Any] | None:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise OutcomeError(bad_request("The notification body is not JSON.")) from exc
    if not isinstance(body, dict):
        raise OutcomeError(bad_request("The notification body is not a FHIR resource."))
    return body


def _receive(
    state: StateDep,
    background: BackgroundTasks,
    catch_up: CatchUp,
    source: str,
    body: dict[str, Any] | None,
    token: str | None,
) -> JSONResponse:
    try:
        source_id, result = receive_notification(state.session_factory, source, body, token)
    except IntakeDeniedError as exc:
        if exc.status == HTTP_UNAUTHORIZED:
            raise OutcomeError(unauthorized(str(exc))) from exc
        if exc.status == HTTP_FORBIDDEN:
            raise OutcomeError(forbidden(str(exc))) from exc
        raise OutcomeError(not_found(f"No source named {source!r}.")) from exc
    except NotificationError as exc:
        raise OutcomeError(unprocessable(str(exc))) from exc
    if result.gap:
        background.add_task(catch_up, source_id)
    diagnostics = (
        f"{result.kind}: {result.ingest.resources} resource(s), {result.fetched} fetched, "
        + (f"{result.unfetched} not fetched (the source failed), " if result.unfetched else "")
        + f"{result.ingest.quarantined} quarantined"
        + (f", {result.ignored} ignored (not a type the source takes)" if result.ignored else "")
        + ("; catch-up sync started" if result.gap else "")
    )
    return JSONResponse(
        operation_outcome([issue("informational", diagnostics, severity="information")]),
        media_type=FHIR_JSON,
    )


@router.post("/{source}", summary="Receive a FHIR Subscription notification (R4 or R4B backport)")
async def receive(
    source: str,
    request: Request,
    state: StateDep,
    background: BackgroundTasks,
    catch_up: CatchUpDep,
) -> JSONResponse:
    body = await _body(request)
    return await run_in_threadpool(
        _receive, state, background, catch_up, source, body, _bearer(request)
    )


@router.put(
    "/{source}/{resource_type}/{resource_id}",
    summary="Receive a resource from an R4 rest-hook Subscription with a payload",
)
async def receive_resource(
    source: str,
    resource_type: str,
    resource_id: str,
    request: Request,
    state: StateDep,
    background: BackgroundTasks,
    catch_up: CatchUpDep,
) -> JSONResponse:
    body = await _body(request)
    if body is None or body.get("resourceType") != resource_type or body.get("id") != resource_id:
        raise OutcomeError(
            bad_request("The body must be the resource named in the URL.", "resourceType")
        )
    return await run_in_threadpool(
        _receive, state, background, catch_up, source, body, _bearer(request)
    )
