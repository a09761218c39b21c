"""Subscription routes: topic-based FHIR Subscriptions (Subscriptions R5 Backport, R4).

A consumer subscribes to one of :data:`sync.delivery.TOPICS` with a ``rest-hook``
channel; :mod:`sync.delivery` hands it a handshake, the topic's events and heartbeats.
Each consumer sees and changes only its own Subscriptions (another's id is a 404).
Creating, reading and changing one needs the ``Subscription`` scope, and the topic's
resource read scope too: a notification discloses which records changed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from gateway.audit import audited
from gateway.auth.tokens import Principal
from gateway.deps import AuditDep, SessionDep, StateDep, check_scope, require
from gateway.fhir.context import fhir_extra
from gateway.fhir.http import MediaType, fhir_response, known_params_only, read_json_body
from gateway.operations.bundle import every_match
from gateway.operations.notify import render_focus
from gateway.operations.read import check_id
from gateway.outcomes import OutcomeError, bad_request, forbidden, not_found
from gateway.state import GatewayState
from store.models import Consumer, Subscription
from sync.delivery import (
    CHANNEL_REST_HOOK,
    PAYLOAD_CONTENTS,
    PAYLOAD_FULL,
    SUBSCRIPTION_SEARCH_PARAMS,
    TOPICS,
    SubscriptionSettingsError,
    apply_spec,
    delete_subscription,
    query_events,
    render_subscription,
    subscription_spec,
    subscription_status,
)

router = APIRouter(prefix="/fhir", tags=["Subscription"])
Creator = Annotated[Principal, Depends(require("Subscription", "c"))]
Reader = Annotated[Principal, Depends(require("Subscription", "r"))]
Searcher = Annotated[Principal, Depends(require("Subscription", "s"))]
Updater = Annotated[Principal, Depends(require("Subscription", "u"))]
Deleter = Annotated[Principal, Depends(require("Subscription", "d"))]
RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/fhir+json": {}}, "description": "A FHIR Subscription"}
}


def _consumer_id(session: Session, principal: Principal) -> int:
    consumer = session.scalar(
        select(Consumer.id).where(
            Consumer.client_id == principal.client_id, Consumer.active.is_(True)
        )
    )
    if consumer is None:
        raise OutcomeError(forbidden("This token's consumer is not registered or not active."))
    return int(consumer)


def _own(session: Session, principal: Principal, subscription_id: str) -> Subscription:
    check_id("Subscription", subscription_id)
    sub = session.get(Subscription, subscription_id)
    if (
        sub is None
        or sub.channel_type != CHANNEL_REST_HOOK
        or sub.consumer_id != _consumer_id(session, principal)
    ):
        raise OutcomeError(not_found(f"Subscription/{subscription_id} is not known."))
    return sub


def _checked(state: GatewayState, principal: Principal, body: Any) -> Any:
    try:
        spec = subscription_spec(body, allow_http=state.delivery_allow_http)
    except SubscriptionSettingsError as exc:
        raise OutcomeError(bad_request(str(exc), exc.path)) from exc
    check_scope(principal, TOPICS[spec.topic].resource_type, "r")
    return spec


def _base(state: GatewayState, request: Request) -> str:
    return f"{state.base_url(request)}/fhir"


@router.post(
    "/Subscription",
    status_code=201,
    summary="Subscribe to a topic (rest-hook)",
    responses={201: RESPONSE[200]},
    openapi_extra=fhir_extra("Subscription", "interaction", "create", body="Subscription"),
)
async def create(
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: Creator,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    body = await read_json_body(request, state.max_body_bytes)
    with audited(audit, principal, "create", request, "Subscription") as entry:
        spec = _checked(state, principal, body)
        sub = Subscription(consumer_id=_consumer_id(session, principal), events_since_start=0)
        apply_spec(sub, spec, body)
        session.add(sub)
        session.commit()
        entry["ids"] = [sub.id]
    location = f"{_base(state, request)}/Subscription/{sub.id}"
    return fhir_response(
        render_subscription(sub), media, status=201, headers={"Location": location}
    )


@router.get(
    "/Subscription/{subscription_id}",
    summary="Read a Subscription",
    responses=RESPONSE,
    openapi_extra=fhir_extra("Subscription", "interaction", "read"),
)
def read(
    subscription_id: str,
    request: Request,
    session: SessionDep,
    principal: Reader,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    with audited(audit, principal, "read", request, "Subscription", subscription_id):
        sub = _own(session, principal, subscription_id)
    return fhir_response(render_subscription(sub), media)


@router.get(
    "/Subscription",
    summary="The caller's Subscriptions",
    responses=RESPONSE,
    openapi_extra=fhir_extra(
        "Subscription",
        "interaction",
        "search-type",
        search=SUBSCRIPTION_SEARCH_PARAMS,
    ),
)
def search(
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: Searcher,
    audit: AuditDep,
    media: MediaType,
    status: str | None = None,
) -> Response:
    with audited(audit, principal, "search", request, "Subscription") as entry:
        known_params_only(request, SUBSCRIPTION_SEARCH_PARAMS)
        query = (
            select(Subscription)
            .where(
                Subscription.consumer_id == _consumer_id(session, principal),
                Subscription.channel_type == CHANNEL_REST_HOOK,
            )
            .order_by(Subscription.created_at, Subscription.id)
        )
        if status:
            query = query.where(Subscription.status.in_(status.split(",")))
        subs = session.scalars(query).all()
        entry["ids"] = [s.id for s in subs]
    rendered = [render_subscription(s) for s in subs]
    bundle = every_match(state.base_url(request), rendered, self_url=str(request.url))
    return fhir_response(bundle, media)


@router.put(
    "/Subscription/{subscription_id}",
    summary="Change a Subscription (status off pauses it; requested starts it again)",
    responses=RESPONSE,
    openapi_extra=fhir_extra("Subscription", "interaction", "update", body="Subscription"),
)
async def update(
    subscription_id: str,
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: Updater,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    body = await read_json_body(request, state.max_body_bytes)
    with audited(audit, principal, "update", request, "Subscription", subscription_id):
        if isinstance(body, dict) and body.get("id") not in (None, subscription_id):
            raise OutcomeError(bad_request("The body's id is not the URL's.", "Subscription.id"))
        sub = _own(session, principal, subscription_id)
        apply_spec(sub, _checked(state, principal, body), body)
        session.commit()
    return fhir_response(render_subscription(sub), media)


@router.delete(
    "/Subscription/{subscription_id}",
    status_code=204,
    summary="End a Subscription (its undelivered events go with it)",
    openapi_extra=fhir_extra("Subscription", "interaction", "delete"),
)
def delete(
    subscription_id: str,
    request: Request,
    session: SessionDep,
    principal: Deleter,
    audit: AuditDep,
) -> Response:
    with audited(audit, principal, "delete", request, "Subscription", subscription_id):
        delete_subscription(session, _own(session, principal, subscription_id))
        session.commit()
    return Response(status_code=204)


@router.get(
    "/Subscription/{subscription_id}/$status",
    summary="A Subscription's status and event count (backport $status)",
    responses=RESPONSE,
    openapi_extra=fhir_extra("Subscription", "operation", "status"),
)
def status_operation(
    subscription_id: str,
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: Reader,
    audit: AuditDep,
    media: MediaType,
) -> Response:
    with audited(audit, principal, "read", request, "Subscription", subscription_id):
        sub = _own(session, principal, subscription_id)
    return fhir_response(subscription_status(sub, base=_base(state, request)), media)


def _event_number(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise OutcomeError(bad_request(f"{name} must be an event number.", name))
    return int(value)


@router.get(
    "/Subscription/{subscription_id}/$events",
    summary="Notifications already triggered for a Subscription, by event number (backport)",
    responses=RESPONSE,
    openapi_extra=fhir_extra("Subscription", "operation", "events"),
)
def events_operation(
    subscription_id: str,
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: Reader,
    audit: AuditDep,
    media: MediaType,
    eventsSinceNumber: str | None = None,
    eventsUntilNumber: str | None = None,
    content: str | None = None,
) -> Response:
    """``eventsSinceNumber`` to ``eventsUntilNumber`` inclusive (at most 500 from the
    first; by default the latest 500), with ``content`` empty, id-only or full-resource
    (default: the Subscription's own)."""
    with audited(audit, principal, "read", request, "Subscription", subscription_id) as entry:
        since = _event_number(eventsSinceNumber, "eventsSinceNumber")
        until = _event_number(eventsUntilNumber, "eventsUntilNumber")
        if content is not None and content not in PAYLOAD_CONTENTS:
            raise OutcomeError(
                bad_request("content is empty, id-only or full-resource.", "content")
            )
        sub = _own(session, principal, subscription_id)
        if content == PAYLOAD_FULL:
            check_scope(principal, TOPICS[sub.topic].resource_type, "r")
        bundle, disclosed = query_events(
            session,
            sub,
            since=since,
            until=until,
            content=content,
            base=_base(state, request),
            render=render_focus,
        )
        if disclosed:
            entry["ids"] = [rid for _, rid in disclosed]
    return fhir_response(bundle, media)
