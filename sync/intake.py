"""Push intake: FHIR Subscription notifications from an EHR, fed to the same pipeline.

Two dialects arrive at the same endpoint:

* **R4B / Subscriptions Backport** (topic-based): a ``Bundle`` (type ``history``)
  whose first entry is the notification status, an R4B ``SubscriptionStatus`` or,
  on R4 servers, a ``Parameters`` with the backport status profile. Its ``type`` is
  ``handshake``, ``heartbeat``, ``event-notification``, ``query-status`` or
  ``query-event``. Payloads are ``empty``, ``id-only`` (focus references; we fetch
  each resource) or ``full-resource`` (the resources ride in the entries).
  http://hl7.org/fhir/uv/subscriptions-backport/notifications.html
* **R4 classic** rest-hook: an empty POST is a ping (the client syncs), a body is
  the resource itself (a PUT to ``[endpoint]/[type]/[id]`` when the channel carries
  a payload). https://hl7.org/fhir/R4/subscription.html#channels

Event numbers (``eventsSinceSubscriptionStart``, ``notificationEvent.eventNumber``)
are remembered per subscription; a jump means notifications were lost, and the
caller then runs a catch-up sync of the source from its cursor.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors import ConnectorError, Page, Source, build_source
from store import CursorRepository
from store.models import Source as SourceRow
from store.models import SyncCursor
from store.types import as_utc, utcnow
from sync import catchup
from sync.patients import PatientOptions
from sync.pipeline import IngestResult, ingest_page
from sync.runner import (
    INTAKE_TOKEN_KEY,
    SourceFactory,
    SyncError,
    bound_patient_options,
    lock_source,
    source_config,
)

log = logging.getLogger(__name__)

HTTP_NOT_FOUND = 404
#: Resource types push intake takes in; other focus types are ignored.
INTAKE_TYPES = ("Patient", "Encounter")
#: ``sync_cursor.resource_type`` prefix under which a subscription's last event number is kept.
PUSH_STATE_PREFIX = "$push:"
PUSH_STATE_KEY_CHARS = 16
KIND_HANDSHAKE = "handshake"
KIND_HEARTBEAT = "heartbeat"
KIND_EVENT = "event-notification"
KIND_QUERY_EVENT = "query-event"
KIND_QUERY_STATUS = "query-status"
#: R4 classic: an empty POST.
KIND_PING = "ping"
#: R4 classic: the resource itself.
KIND_RESOURCE = "resource"
NOTIFICATION_KINDS = frozenset(
    {KIND_HANDSHAKE, KIND_HEARTBEAT, KIND_EVENT, KIND_QUERY_EVENT, KIND_QUERY_STATUS}
)

Fetch = Callable[[str, str], "dict[str, Any] | None"]


class NotificationError(SyncError):
    """A notification that cannot be read (the reason names the element, never a value)."""


@dataclass
class Notification:
    """A notification, whichever dialect it came in."""

    kind: str
    subscription: str | None = None
    events_since_start: int | None = None
    event_numbers: list[int] = field(default_factory=list)
    #: (resource type, id) of every event's focus.
    focus: list[tuple[str, str]] = field(default_factory=list)
    #: Resources carried in the notification (full-resource payload, or R4 classic).
    resources: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class IntakeResult:
    kind: str
    gap: bool = False
    fetched: int = 0
    #: Focus resources the source could not serve right now (down, refusing): the
    #: catch-up sync the notification then owes reads them (``gap`` is set).
    unfetched: int = 0
    ignored: int = 0
    #: What the pages did (``deleted``: the focus resources the server no longer has).
    ingest: IngestResult = field(default_factory=IngestResult)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "gap": self.gap,
            "fetched": self.fetched,
            "unfetched": self.unfetched,
            "ignored": self.ignored,
            **self.ingest.as_dict(),
        }


def _int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise NotificationError(f"{where} is not an integer") from exc


def parse_reference(reference: str | None) -> tuple[str, str] | None:
    """("Patient", "123") from "Patient/123", an absolute URL, or one with ``_history``."""
    if not reference:
        return None
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) < 2 or not parts[-1] or not parts[-2][:1].isupper():
        return None
    return parts[-2], parts[-1]


def _status_from_subscription_status(resource: dict[str, Any]) -> Notification:
    note = Notification(
        kind=str(resource.get("type") or ""),
        subscription=(resource.get("subscription") or {}).get("reference"),
        events_since_start=_int(
            resource.get("eventsSinceSubscriptionStart"),
            "SubscriptionStatus.eventsSinceSubscriptionStart",
        ),
    )
    for event in resource.get("notificationEvent") or []:
        number = _int(event.get("eventNumber"), "SubscriptionStatus.notificationEvent.eventNumber")
        if number is not None:
            note.event_numbers.append(number)
        focus = parse_reference((event.get("focus") or {}).get("reference"))
        if focus:
            note.focus.append(focus)
    return note


def _param_value(param: dict[str, Any]) -> Any:
    for key, value in param.items():
        if key.startswith("value"):
            return value
    return None


def _status_from_parameters(resource: dict[str, Any]) -> Notification:
    note = Notification(kind="")
    for param in resource.get("parameter") or []:
        name = param.get("name")
        value = _param_value(param)
        if name == "type":
            note.kind = str(value or "")
        elif name == "subscription":
            note.subscription = (value or {}).get("reference")
        elif name == "events-since-subscription-start":
            note.events_since_start = _int(value, "Parameters.events-since-subscription-start")
        elif name == "notification-event":
            for part in param.get("part") or []:
                part_value = _param_value(part)
                if part.get("name") == "event-number":
                    number = _int(part_value, "notification-event.event-number")
                    if number is not None:
                        note.event_numbers.append(number)
                elif part.get("name") == "focus":
                    focus = parse_reference((part_value or {}).get("reference"))
                    if focus:
                        note.focus.append(focus)
    return note


def parse_notification(body: dict[str, Any] | None) -> Notification:
    """Read a notification body (None or ``{}`` is an R4 classic ping)."""
    if not body:
        return Notification(kind=KIND_PING)
    if body.get("resourceType") != "Bundle":
        if body.get("resourceType") in INTAKE_TYPES:
            return Notification(kind=KIND_RESOURCE, resources=[body])
        raise NotificationError("expected a notification Bundle or a Patient/Encounter")
    entries = body.get("entry") or []
    first = (entries[0].get("resource") if entries else None) or {}
    if first.get("resourceType") == "SubscriptionStatus":
        note = _status_from_subscription_status(first)
    elif first.get("resourceType") == "Parameters":
        note = _status_from_parameters(first)
    else:
        raise NotificationError("Bundle.entry[0] is not a SubscriptionStatus or Parameters")
    if note.kind not in NOTIFICATION_KINDS:
        raise NotificationError("notification type is missing or unknown")
    for entry in entries[1:]:
        resource = entry.get("resource")
        if isinstance(resource, dict):
            note.resources.append(resource)
        else:
            focus = parse_reference(entry.get("fullUrl"))
            if focus and focus not in note.focus:
                note.focus.append(focus)
    return note


def _state_key(subscription: str | None) -> str:
    digest = hashlib.sha256((subscription or "").encode()).hexdigest()[:PUSH_STATE_KEY_CHARS]
    return PUSH_STATE_PREFIX + digest


def _detect_gap(
    session: Session, source_id: int, note: Notification, *, heard: bool = True
) -> bool:
    """Compare the event numbers with the last one seen for the subscription; remember the
    new. ``heard``: the notification arrived from the EHR (it is when the subscription was
    last heard from); False for a ``$status`` the watch read (the time is kept)."""
    key = _state_key(note.subscription)
    row = session.get(SyncCursor, (source_id, key))
    state: dict[str, Any] = json.loads(row.cursor or "{}") if row is not None else {}
    last: int | None = state.get("last_event")
    if row is not None and "heard_at" not in state:  # kept before "heard_at" was
        updated = as_utc(row.updated_at)
        state["heard_at"] = updated.isoformat() if updated else None
    gap = False
    newest: int | None
    if note.kind == KIND_HANDSHAKE:
        newest = note.events_since_start or 0
        # A Subscription started again (after an error) handshakes with its count so far:
        # more than we received is a gap, as for a heartbeat.
        gap = last is not None and newest > last
    elif note.kind in (KIND_HEARTBEAT, KIND_QUERY_STATUS):
        newest = note.events_since_start if note.events_since_start is not None else last
        gap = newest is not None and newest > (last or 0)
    else:
        numbers = sorted(note.event_numbers)
        newest = max([*numbers, note.events_since_start or 0, last or 0]) or None
        if numbers:
            expected = (last or 0) + 1
            gap = numbers[0] > expected or any(b - a > 1 for a, b in itertools.pairwise(numbers))
    if newest is not None and (last is None or newest >= last) and (heard or newest != last):
        state = {
            "subscription": note.subscription,
            "last_event": newest,
            "heard_at": utcnow().isoformat() if heard else state.get("heard_at"),
        }
        CursorRepository(session).set(source_id, key, json.dumps(state))
    return gap


def note_status(
    session: Session,
    source_id: int,
    body: dict[str, Any],
    *,
    reference: str | None = None,
    now: datetime | None = None,
) -> bool:
    """A Subscription's ``$status`` (Subscriptions Backport), read from the EHR by the watch:
    whether it counts events we never received. Such a gap is owed a catch-up
    (:mod:`sync.catchup`), and the count is kept as the last event, so it is owed once.
    ``reference``: the Subscription as its notifications name it (the same state row)."""
    note = parse_notification(body)
    if note.kind != KIND_QUERY_STATUS or note.events_since_start is None:
        raise NotificationError("expected a query-status with events-since-subscription-start")
    if reference:
        note.subscription = reference
    gap = _detect_gap(session, source_id, note, heard=False)
    if gap:
        catchup.owe(session, source_id, now=now)
    return gap


@dataclass
class Payload:
    """The resources a notification brings: those it carries and, for an id-only
    payload, those read from the source (:func:`read_payload`, before any lock)."""

    found: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {t: [] for t in INTAKE_TYPES}
    )
    #: Focus resources the source no longer has (404/410): deleted here too.
    gone: dict[str, list[str]] = field(default_factory=lambda: {t: [] for t in INTAKE_TYPES})
    fetched: int = 0
    unfetched: int = 0
    ignored: int = 0


def read_payload(
    note: Notification,
    fetch: Fetch,
    source_id: int,
    types: Collection[str] = INTAKE_TYPES,
) -> Payload:
    """Collect what ``note`` brings, fetching an id-only payload's focus from the source.

    ``types``: the resource types the source is synced for (its ``--types``); a resource
    of another type, carried or named, is ignored as a sync would not read it.

    ``fetch(type, id)`` reads one resource; a None answer (404/410) means it is gone. One
    the source cannot serve now (a :class:`~connectors.ConnectorError`) is left, with the
    rest of the focus, to the catch-up sync the notification then owes. Nothing here
    touches the database, so the source's lock is not held while the EHR answers (on
    SQLite every other writer would wait for it). A version read here that a sync stores
    a newer one of meanwhile is skipped by its ``lastUpdated``
    (:func:`sync.records.is_unchanged`)."""
    payload = Payload()
    carried: set[tuple[str, str]] = set()
    for resource in note.resources:
        rtype = resource.get("resourceType")
        carried.add((str(rtype), str(resource.get("id"))))  # its focus entry is the same
        if rtype in payload.found and rtype in types:
            payload.found[str(rtype)].append(resource)
        else:
            payload.ignored += 1
    if note.kind not in (KIND_EVENT, KIND_QUERY_EVENT):
        return payload
    for rtype, rid in dict.fromkeys(note.focus):
        if (rtype, rid) in carried:
            continue
        if rtype not in payload.found or rtype not in types:
            payload.ignored += 1
            continue
        if payload.unfetched:  # the source failed: the catch-up reads the rest too
            payload.unfetched += 1
            continue
        try:
            fetched = fetch(rtype, rid)
        except ConnectorError as exc:
            # The notification is taken all the same (an EHR whose notifications fail
            # may stop sending them); what it names is read by the catch-up it owes.
            payload.unfetched += 1
            log.warning(
                "notification focus not fetched; a catch-up sync is owed",
                extra={"source_id": source_id, "error": type(exc).__name__},
            )
            continue
        payload.fetched += 1
        if fetched is None:
            payload.gone[rtype].append(rid)
        else:
            payload.found[rtype].append(fetched)
    return payload


def handle_notification(
    session: Session,
    source_id: int,
    note: Notification,
    payload: Payload,
    *,
    options: PatientOptions | None = None,
) -> IntakeResult:
    """Ingest one notification and what it brought into ``session``, which holds the
    source's lock (the caller commits).

    ``IntakeResult.gap`` (or a classic ping) tells the caller to run a catch-up sync.
    """
    result = IntakeResult(
        kind=note.kind,
        gap=note.kind == KIND_PING,
        fetched=payload.fetched,
        unfetched=payload.unfetched,
        ignored=payload.ignored,
    )
    if note.kind in NOTIFICATION_KINDS:
        result.gap = _detect_gap(session, source_id, note)
    for rtype in INTAKE_TYPES:  # Patients first, so their Encounters attach at once
        if payload.found[rtype] or payload.gone[rtype]:
            # The deletions travel with the page, whose transaction locks their golden
            # records with its own records (sync.pipeline.ingest_page).
            page = Page(rtype, payload.found[rtype], None, deleted=payload.gone[rtype])
            result.ingest.add(
                ingest_page(session, source_id, page, options=options, write_cursor=False)
            )
    result.gap = result.gap or result.unfetched > 0
    if result.gap:  # owed until a run started from now on finishes (sync.catchup)
        catchup.owe(session, source_id)
    log.info(
        "notification received",
        extra={
            "source_id": source_id,
            "event": note.kind,
            "resources": result.ingest.resources,
            "count": result.fetched,
            "reason": "gap" if result.gap else None,
        },
    )
    return result


class IntakeDeniedError(SyncError):
    """The notification's sender is not allowed: unknown source, intake off, or a bad token."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


def hash_intake_token(token: str) -> str:
    """What a source's config keeps of its intake token (``intake_token_sha256``)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def receive_notification(
    session_factory: Callable[[], Session],
    source_name: str,
    body: dict[str, Any] | None,
    bearer_token: str | None,
    *,
    source_factory: SourceFactory = build_source,
    default_region: str | None = None,
) -> tuple[int, IntakeResult]:
    """Authenticate the sender, ingest the notification and commit; returns (source id, result).

    Push intake is on for a source whose config holds ``intake_token_sha256``; the
    sender presents the token as ``Authorization: Bearer …`` (the Subscription's
    ``channel.header``). Raises :class:`IntakeDeniedError` (401/403/404) or
    :class:`NotificationError`.
    """
    with session_factory() as session:
        source = session.scalar(select(SourceRow).where(SourceRow.name == source_name))
        if source is None or not source.enabled:
            raise IntakeDeniedError("no such source", status=HTTP_NOT_FOUND)
        expected = (source.config or {}).get(INTAKE_TOKEN_KEY)
        if not expected:
            raise IntakeDeniedError("push intake is not enabled for this source", status=403)
        if not bearer_token or not hmac.compare_digest(
            hash_intake_token(bearer_token), str(expected)
        ):
            raise IntakeDeniedError("a valid intake token is required", status=401)
        source_id = source.id
        options = bound_patient_options(source, default_region)
        config = source_config(source)
        types = frozenset(source.resource_types)
        note = parse_notification(body)
        session.commit()  # no transaction stays open while the EHR answers
        connector: Source | None = None

        def fetch(resource_type: str, resource_id: str) -> dict[str, Any] | None:
            nonlocal connector
            if connector is None:
                connector = source_factory(config)
            return connector.fetch(resource_type, resource_id)

        try:
            payload = read_payload(note, fetch, source_id, types)
        finally:
            if connector is not None:
                connector.close()
        lock_source(session, source_id)  # a sync chunk of the same source waits, or we do
        # The source may have been disabled or removed while the EHR answered.
        if not session.scalar(select(SourceRow.enabled).where(SourceRow.id == source_id)):
            raise IntakeDeniedError("no such source", status=HTTP_NOT_FOUND)
        result = handle_notification(session, source_id, note, payload, options=options)
        session.commit()
        return source_id, result
