"""Delivery: the outbox's change events to the consumers, at least once and in order.

Two kinds of subscription share one queue and one sender:

* **FHIR Subscriptions**, topic-based as the Subscriptions R5 Backport IG profiles them
  for R4 (https://hl7.org/fhir/uv/subscriptions-backport/): ``criteria`` names one of
  :data:`TOPICS`, ``backport-filter-criteria`` narrows it to a patient, and the
  ``rest-hook`` channel receives ``history`` Bundles whose first entry is the
  ``backport-subscription-status-r4`` Parameters (``handshake``, ``heartbeat``,
  ``event-notification``), with ``empty``, ``id-only`` or ``full-resource`` payloads.
* **Webhooks** (a consumer's ``webhook_url``): one JSON message per event, signed as
  the Standard Webhooks specification says (https://www.standardwebhooks.com/:
  ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), by the
  ``standardwebhooks`` library.

The work, in :func:`deliver`:

1. :func:`fan_out` reads outbox events not yet handed out (``delivered_at`` null), gives
   each matching subscription the event under its next event number
   (``subscription_event``; the number is the backport's
   ``eventsSinceSubscriptionStart``) and marks the events handed out, in one
   transaction under a lock, so two workers never number one subscription's events
   twice. An event whose transaction commits late is still picked up: the read is by
   state, not by a cursor over ids.
2. Each due subscription is claimed with a lease (``next_attempt_at`` in the future), so
   one sender at a time sends its queue; then it sends what is due: a handshake (a new
   FHIR subscription), its next events (at most ``max_count`` in one notification), or
   a heartbeat. A 2xx acknowledges the events (``delivered_through``); anything else
   is retried with exponential backoff and jitter, capped at
   :data:`BACKOFF_MAX_S`, and after :data:`ERROR_AFTER_ATTEMPTS` failures (or at once,
   on a 4xx that is not 408 or 429) the subscription's status is ``error``. It keeps
   its queue and is still retried: nothing is dropped, and the first success makes it
   ``active`` again. A sender that dies mid-send leaves its lease to expire, and the
   next one sends the same events again (at least once).

Nothing here logs an endpoint, a header or a payload: only subscription ids, counts and
HTTP status codes.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import secrets
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    and_,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from fhir_mapping import InvalidResource, validate_resource
from store import AuditRepository, unit_of_work
from store.bulk import BulkWriter, chunks
from store.models import Consumer, Outbox, Subscription, SubscriptionEvent
from store.types import fhir_instant, utcnow
from sync.context import TaskContext

log = logging.getLogger(__name__)

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTER_CRITERIA_URL = BACKPORT + "backport-filter-criteria"
HEARTBEAT_URL = BACKPORT + "backport-heartbeat-period"
TIMEOUT_URL = BACKPORT + "backport-timeout"
MAX_COUNT_URL = BACKPORT + "backport-max-count"
PAYLOAD_CONTENT_URL = BACKPORT + "backport-payload-content"
SUBSCRIPTION_PROFILE = BACKPORT + "backport-subscription"
STATUS_PROFILE = BACKPORT + "backport-subscription-status-r4"
TOPIC_BASE = "https://askonce.dev/fhir/SubscriptionTopic/"

CHANNEL_REST_HOOK = "rest-hook"
CHANNEL_WEBHOOK = "webhook"
#: A webhook's topic: every event its consumer's scopes may see.
ALL_EVENTS = "*"
PAYLOAD_EMPTY = "empty"
PAYLOAD_ID_ONLY = "id-only"
PAYLOAD_FULL = "full-resource"
PAYLOAD_CONTENTS = (PAYLOAD_EMPTY, PAYLOAD_ID_ONLY, PAYLOAD_FULL)
PAYLOAD_MIME_TYPES = ("application/fhir+json", "application/json")
STATUS_REQUESTED = "requested"
STATUS_ACTIVE = "active"
STATUS_ERROR = "error"
STATUS_OFF = "off"
#: Statuses a client may ask for; ``active`` and ``error`` are the server's to set.
CLIENT_STATUSES = (STATUS_REQUESTED, STATUS_ACTIVE, STATUS_OFF)
KIND_HANDSHAKE = "handshake"
KIND_HEARTBEAT = "heartbeat"
KIND_EVENT = "event-notification"
KIND_QUERY_STATUS = "query-status"
KIND_QUERY_EVENT = "query-event"

DEFAULT_MAX_COUNT = 50
MAX_MAX_COUNT = 500
DEFAULT_TIMEOUT_S = 10
MAX_TIMEOUT_S = 60
MIN_HEARTBEAT_S = 10
#: A sender's claim on a subscription; longer than one send can take.
LEASE_S = MAX_TIMEOUT_S * 2
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 3600.0
ERROR_AFTER_ATTEMPTS = 3
#: Outbox events read per fan-out transaction.
FAN_OUT_BATCH = 1000
#: How long one :func:`deliver` call keeps sending before it returns (a beat tick's task).
DEFAULT_DELIVER_S = 25.0
#: PostgreSQL advisory lock class of the fan-out ("DLV").
DELIVERY_LOCK_CLASS = 0x444C56
WEBHOOK_SECRET_BYTES = 32
#: Webhook messages sent in one round, their progress recorded once.
WEBHOOK_BATCH = 100
#: Hosts a plain-http endpoint may name (a receiver on the same machine).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SUCCESS_FIRST, SUCCESS_LAST = 200, 299
#: 4xx answers worth retrying soon: a timeout and a rate limit.
RETRYABLE_4XX = frozenset({408, 429})
HTTP_CLIENT_ERROR = 400
HTTP_SERVER_ERROR = 500

#: ``render(session, resource_type, id)``: the resource a consumer reads, or None if gone.
Render = Callable[[Session, str, str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Topic:
    """What a subscription can ask for: the events of one resource type."""

    url: str
    resource_type: str
    events: frozenset[str]
    #: The search parameter ``backport-filter-criteria`` may use: ``Type?name=Patient/id``.
    filter_param: str


#: A golden Patient record was created, changed (deleted included), merged or unmerged.
PATIENT_TOPIC = Topic(
    TOPIC_BASE + "patient-change",
    "Patient",
    frozenset({"patient.created", "patient.updated", "patient.merged", "patient.unmerged"}),
    "_id",
)
#: An Encounter of a golden Patient was created, changed or deleted.
ENCOUNTER_TOPIC = Topic(
    TOPIC_BASE + "encounter-change",
    "Encounter",
    frozenset({"encounter.created", "encounter.updated", "encounter.deleted"}),
    "patient",
)
TOPICS: dict[str, Topic] = {t.url: t for t in (PATIENT_TOPIC, ENCOUNTER_TOPIC)}
#: The topic of each event type.
TOPIC_OF_EVENT: dict[str, Topic] = {e: t for t in TOPICS.values() for e in t.events}


#: The search parameters of ``GET /fhir/Subscription`` (a consumer's own Subscriptions).
SUBSCRIPTION_SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "status": ("token", "requested | active | error | off"),
}


class SubscriptionSettingsError(ValueError):
    """A Subscription this server cannot honour; ``path`` names the element."""

    def __init__(self, message: str, path: str = "Subscription") -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class SubscriptionSpec:
    """What a FHIR Subscription asks for, checked."""

    topic: str
    #: Golden Patient ids the events must concern (empty: every patient).
    patients: tuple[str, ...]
    endpoint: str
    headers: tuple[str, ...]
    payload_content: str
    heartbeat_s: int | None
    max_count: int | None
    timeout_s: int | None
    status: str
    end: datetime | None


def _extension(element: dict[str, Any] | None, url: str) -> Any:
    for ext in (element or {}).get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            return next((v for k, v in ext.items() if k.startswith("value")), None)
    return None


def _extensions(element: dict[str, Any] | None, url: str) -> list[Any]:
    return [
        next((v for k, v in ext.items() if k.startswith("value")), None)
        for ext in (element or {}).get("extension") or []
        if isinstance(ext, dict) and ext.get("url") == url
    ]


def _bounded(value: Any, path: str, low: int, high: int | None) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SubscriptionSettingsError(f"{path} must be an integer of at least {low}", path)
    if high is not None and value > high:
        raise SubscriptionSettingsError(f"{path} must be at most {high}", path)
    return value


def _filter_patients(topic: Topic, criteria: Iterable[Any]) -> tuple[str, ...]:
    """Golden ids from ``backport-filter-criteria`` values: ``Patient?_id=ID`` on the Patient
    topic, ``Encounter?patient=Patient/ID`` on the Encounter one (comma: any of them)."""
    path = "Subscription.criteria.extension"
    wanted: list[str] = []
    for value in criteria:
        if not isinstance(value, str) or "?" not in value:
            raise SubscriptionSettingsError(
                f"a filter criteria is a search like {topic.resource_type}?"
                f"{topic.filter_param}=Patient/ID",
                path,
            )
        rtype, query = value.split("?", 1)
        if rtype != topic.resource_type:
            raise SubscriptionSettingsError(
                f"this topic's filter criteria search {topic.resource_type}", path
            )
        for name, raw in parse_qsl(query, keep_blank_values=True):
            if name != topic.filter_param:
                raise SubscriptionSettingsError(
                    f"this topic filters on {topic.resource_type}?{topic.filter_param} only",
                    path,
                )
            for one in raw.split(","):
                golden = one.strip().removeprefix("Patient/")
                if not golden or "/" in golden:
                    raise SubscriptionSettingsError("a filter names Patient/ID", path)
                wanted.append(golden)
    return tuple(dict.fromkeys(wanted))


def check_endpoint(
    url: Any, *, allow_http: bool, path: str = "Subscription.channel.endpoint"
) -> str:
    """``url`` when it is an absolute https URL (http only to a loopback host, or when the
    deployment allows it)."""
    if not isinstance(url, str) or not url:
        raise SubscriptionSettingsError("an endpoint URL is required", path)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SubscriptionSettingsError("the endpoint must be an absolute http(s) URL", path)
    if parts.scheme == "http" and not allow_http and parts.hostname not in LOOPBACK_HOSTS:
        raise SubscriptionSettingsError("the endpoint must use https", path)
    return url


def _headers(values: Any) -> tuple[str, ...]:
    out = []
    for value in values or []:
        name, sep, _ = str(value).partition(":")
        if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
            raise SubscriptionSettingsError(
                "a channel header is 'Name: value'", "Subscription.channel.header"
            )
        out.append(str(value))
    return tuple(out)


def subscription_spec(resource: Any, *, allow_http: bool = False) -> SubscriptionSpec:
    """Check a FHIR R4 Subscription (backport profile); raises SubscriptionSettingsError."""
    try:
        validate_resource(resource, "Subscription")
    except InvalidResource as exc:
        first = exc.issues[0] if exc.issues else None
        raise SubscriptionSettingsError(str(exc), first.path if first else "Subscription") from exc
    topic = TOPICS.get(resource.get("criteria") or "")
    if topic is None:
        raise SubscriptionSettingsError(
            "criteria must name a topic this server offers: " + ", ".join(sorted(TOPICS)),
            "Subscription.criteria",
        )
    patients = _filter_patients(topic, _extensions(resource.get("_criteria"), FILTER_CRITERIA_URL))
    channel = resource.get("channel") or {}
    if channel.get("type") != CHANNEL_REST_HOOK:
        raise SubscriptionSettingsError(
            "only the rest-hook channel is offered", "Subscription.channel.type"
        )
    payload = channel.get("payload")
    if payload is not None and payload not in PAYLOAD_MIME_TYPES:
        raise SubscriptionSettingsError(
            "the payload is application/fhir+json", "Subscription.channel.payload"
        )
    content = _extension(channel.get("_payload"), PAYLOAD_CONTENT_URL) or (
        PAYLOAD_ID_ONLY if payload else PAYLOAD_EMPTY
    )
    if content not in PAYLOAD_CONTENTS:
        raise SubscriptionSettingsError(
            "payload content is one of " + ", ".join(PAYLOAD_CONTENTS),
            "Subscription.channel.payload.extension",
        )
    status = resource.get("status")
    if status not in CLIENT_STATUSES:
        raise SubscriptionSettingsError("status is requested (or off)", "Subscription.status")
    end = resource.get("end")
    return SubscriptionSpec(
        topic=topic.url,
        patients=patients,
        endpoint=check_endpoint(channel.get("endpoint"), allow_http=allow_http),
        headers=_headers(channel.get("header")),
        payload_content=content,
        heartbeat_s=_bounded(
            _extension(channel, HEARTBEAT_URL), "heartbeatPeriod", MIN_HEARTBEAT_S, None
        ),
        max_count=_bounded(_extension(channel, MAX_COUNT_URL), "maxCount", 1, MAX_MAX_COUNT),
        timeout_s=_bounded(_extension(channel, TIMEOUT_URL), "timeout", 1, MAX_TIMEOUT_S),
        status=STATUS_OFF if status == STATUS_OFF else STATUS_REQUESTED,
        end=datetime.fromisoformat(end.replace("Z", "+00:00")) if end else None,
    )


def apply_spec(sub: Subscription, spec: SubscriptionSpec, resource: dict[str, Any]) -> None:
    """Store a checked Subscription on its row; a changed endpoint or topic, or a client
    asking for ``requested`` again, starts over with a handshake."""
    restart = (
        sub.endpoint != spec.endpoint
        or sub.topic != spec.topic
        or spec.status == STATUS_OFF
        or sub.status in (STATUS_OFF, STATUS_ERROR)
        or sub.status is None
    )
    sub.topic = spec.topic
    sub.filters = {"patients": list(spec.patients)}
    sub.channel_type = CHANNEL_REST_HOOK
    sub.endpoint = spec.endpoint
    sub.headers = list(spec.headers)
    sub.payload_content = spec.payload_content
    sub.heartbeat_s = spec.heartbeat_s
    sub.max_count = spec.max_count
    stored = {k: v for k, v in resource.items() if k not in ("id", "meta", "status", "error")}
    if spec.end is not None:
        stored["end"] = spec.end.isoformat()
    sub.resource = stored
    sub.updated_at = utcnow()
    if spec.status == STATUS_OFF:
        sub.status = STATUS_OFF
    elif restart:
        sub.status = STATUS_REQUESTED
        sub.last_sent_at = None
        sub.attempts = 0
        sub.error = None
        sub.next_attempt_at = None


def render_subscription(sub: Subscription) -> dict[str, Any]:
    """The Subscription as a consumer reads it: what it asked for, with the server's status."""
    resource: dict[str, Any] = {"resourceType": "Subscription", **(sub.resource or {})}
    resource["id"] = sub.id
    resource["meta"] = {
        "profile": [SUBSCRIPTION_PROFILE],
        "lastUpdated": fhir_instant(sub.updated_at or sub.created_at),
    }
    resource["status"] = sub.status
    if sub.error:
        resource["error"] = sub.error
    else:
        resource.pop("error", None)
    return resource


def delete_subscription(session: Session, sub: Subscription) -> None:
    """End a subscription: it and its queue go (the queue has no foreign key to cascade)."""
    session.execute(delete(SubscriptionEvent).where(SubscriptionEvent.subscription_id == sub.id))
    session.delete(sub)


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(WEBHOOK_SECRET_BYTES)).decode()


def add_webhook(
    session: Session, consumer_id: int, url: str, resource_types: Sequence[str], *, allow_http: bool
) -> tuple[Subscription, str]:
    """A consumer's webhook: every event of ``resource_types``; returns it and its secret."""
    check_endpoint(url, allow_http=allow_http, path="webhook_url")
    secret = new_webhook_secret()
    sub = Subscription(
        consumer_id=consumer_id,
        status=STATUS_ACTIVE,
        topic=ALL_EVENTS,
        filters={"types": sorted(set(resource_types))},
        channel_type=CHANNEL_WEBHOOK,
        endpoint=url,
        headers=[],
        payload_content=PAYLOAD_ID_ONLY,
        events_since_start=0,
        resource={},
        secret=secret,
        delivered_through=0,
        attempts=0,
        updated_at=utcnow(),
    )
    session.add(sub)
    session.flush()
    return sub, secret


# --- fan-out -------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRow:
    """An outbox event as the fan-out and the sender read it."""

    id: int
    event_type: str
    aggregate_type: str
    aggregate_id: str
    payload: dict[str, Any]
    created_at: datetime


#: The outbox columns an :class:`EventRow` is made of, in its order.
EVENT_COLUMNS = (
    Outbox.id,
    Outbox.event_type,
    Outbox.aggregate_type,
    Outbox.aggregate_id,
    Outbox.payload,
    Outbox.created_at,
)


def _patients_of(event: EventRow) -> set[str]:
    """The golden Patient ids an event concerns."""
    payload = event.payload or {}
    if event.aggregate_type == "Patient":
        ids = {event.aggregate_id}
        for key in ("merged", "other"):
            if isinstance(payload.get(key), str):
                ids.add(payload[key])
        return ids
    golden = payload.get("golden_id")
    return {golden} if isinstance(golden, str) else set()


def matches(sub: Subscription, event: EventRow) -> bool:
    """Whether ``sub`` hears of ``event``."""
    if sub.created_at is not None and event.created_at < sub.created_at:
        return False
    filters = sub.filters or {}
    if sub.channel_type == CHANNEL_WEBHOOK:
        return event.aggregate_type in (filters.get("types") or ())
    topic = TOPIC_OF_EVENT.get(event.event_type)
    if topic is None or topic.url != sub.topic:
        return False
    patients = filters.get("patients") or []
    return not patients or bool(_patients_of(event) & set(patients))


def _follow_merge(sub: Subscription, event: EventRow) -> None:
    """A patient filter that names a merged record follows it to the survivor."""
    patients = (sub.filters or {}).get("patients") or []
    merged = (event.payload or {}).get("merged")
    if (
        event.event_type == "patient.merged"
        and merged in patients
        and event.aggregate_id not in patients
    ):
        sub.filters = {**sub.filters, "patients": [*patients, event.aggregate_id]}


def listening() -> ColumnElement[bool]:
    """A subscription that hears events: not ``off``, of an active consumer (with
    ``Consumer`` joined)."""
    return and_(Subscription.status != STATUS_OFF, Consumer.active.is_(True))


def oldest_pending_at() -> ScalarSelect[datetime]:
    """When a subscription's first unacknowledged event was written (NULL when none): a
    scalar subquery correlated with ``Subscription`` (the event numbers are dense, so the
    first one is ``delivered_through + 1``)."""
    return (
        select(Outbox.created_at)
        .join(SubscriptionEvent, SubscriptionEvent.outbox_id == Outbox.id)
        .where(
            SubscriptionEvent.subscription_id == Subscription.id,
            SubscriptionEvent.event_number == Subscription.delivered_through + 1,
        )
        .scalar_subquery()
    )


def lock_fan_out(session: Session) -> None:
    """One fan-out at a time: an advisory lock on PostgreSQL; on SQLite a first write takes
    the database's one writer lock before anything is read."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:cls, 0)"), {"cls": DELIVERY_LOCK_CLASS})
    else:
        session.execute(text("DELETE FROM subscription_event WHERE 1 = 0"))


@dataclass
class FanOut:
    events: int = 0
    queued: int = 0


def fan_out(session: Session, *, limit: int = FAN_OUT_BATCH, now: datetime | None = None) -> FanOut:
    """Hand up to ``limit`` outbox events to the subscriptions that match them (the
    caller commits)."""
    lock_fan_out(session)
    now = now or utcnow()
    rows = session.execute(
        select(*EVENT_COLUMNS)
        .where(Outbox.delivered_at.is_(None))
        .order_by(Outbox.next_attempt_at, Outbox.id)
        .limit(limit)
    ).all()
    if not rows:
        return FanOut()
    events = [EventRow(*row) for row in rows]
    subs = session.scalars(
        select(Subscription)
        .join(Consumer, Consumer.id == Subscription.consumer_id)
        .where(listening())
        .order_by(Subscription.created_at, Subscription.id)
    ).all()
    queue: list[tuple[str, int, int]] = []
    for event in sorted(events, key=lambda e: e.id):
        for sub in subs:
            if matches(sub, event):
                sub.events_since_start += 1
                queue.append((sub.id, sub.events_since_start, event.id))
                _follow_merge(sub, event)
    # COPY on PostgreSQL: an ORM insert took ~125 us a row there (the bench's fan-out).
    BulkWriter(session).insert(
        "subscription_event", ("subscription_id", "event_number", "outbox_id"), queue
    )
    for ids in chunks([e.id for e in events]):
        session.execute(update(Outbox).where(Outbox.id.in_(ids)).values(delivered_at=now))
    return FanOut(events=len(events), queued=len(queue))


# --- messages --------------------------------------------------------------------------


def _focus(event: EventRow) -> tuple[str, str]:
    return event.aggregate_type, event.aggregate_id


def _ref(base: str, resource_type: str, resource_id: str) -> str:
    return f"{base}/{resource_type}/{resource_id}" if base else f"{resource_type}/{resource_id}"


def status_parameters(
    sub: Subscription,
    kind: str,
    *,
    base: str = "",
    events: Sequence[tuple[int, EventRow]] = (),
    status: str | None = None,
    content: str | None = None,
) -> dict[str, Any]:
    """The ``backport-subscription-status-r4`` Parameters of a notification or a $status
    (``content``: the payload content, when not the subscription's own)."""
    params: list[dict[str, Any]] = [
        {
            "name": "subscription",
            "valueReference": {"reference": _ref(base, "Subscription", sub.id)},
        },
        {"name": "topic", "valueCanonical": sub.topic},
        {"name": "status", "valueCode": status or sub.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(sub.events_since_start)},
    ]
    for number, event in events:
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(number)},
            {"name": "timestamp", "valueInstant": fhir_instant(event.created_at)},
        ]
        if (content or sub.payload_content) != PAYLOAD_EMPTY:
            focus = {"reference": _ref(base, *_focus(event))}
            parts.append({"name": "focus", "valueReference": focus})
        params.append({"name": "notification-event", "part": parts})
    if sub.error and kind == KIND_QUERY_STATUS:
        params.append({"name": "error", "valueCodeableConcept": {"text": sub.error}})
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": params,
    }


def _method(event: EventRow) -> tuple[str, str]:
    if event.event_type.endswith(".deleted"):
        return "DELETE", "204"
    if event.event_type.endswith(".created"):
        return "POST", "201"
    return "PUT", "200"


def notification_bundle(
    sub: Subscription,
    kind: str,
    *,
    base: str = "",
    events: Sequence[tuple[int, EventRow]] = (),
    resources: dict[tuple[str, str], dict[str, Any]] | None = None,
    status: str | None = None,
    content: str | None = None,
) -> dict[str, Any]:
    """A backport notification: a ``history`` Bundle, the status first, then one entry per
    event's focus (``id-only``: its URL; ``full-resource``: the resource too)."""
    content = content or sub.payload_content
    status_resource = status_parameters(
        sub, kind, base=base, events=events, status=status, content=content
    )
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{status_resource['id']}",
            "resource": status_resource,
            "request": {"method": "GET", "url": _ref(base, "Subscription", sub.id) + "/$status"},
            "response": {"status": "200"},
        }
    ]
    if content != PAYLOAD_EMPTY:
        seen: set[tuple[str, str]] = set()
        for _, event in events:
            focus = _focus(event)
            if focus in seen:
                continue
            seen.add(focus)
            method, code = _method(event)
            entry: dict[str, Any] = {
                "fullUrl": _ref(base, *focus),
                "request": {"method": method, "url": f"{focus[0]}/{focus[1]}"},
                "response": {"status": code},
            }
            resource = (resources or {}).get(focus)
            if resource is not None and method != "DELETE":
                entry["resource"] = resource
            entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "history",
        "timestamp": fhir_instant(utcnow()),
        "entry": entries,
    }


def webhook_message(event: EventRow) -> dict[str, Any]:
    """A webhook's body (Standard Webhooks: ``type``, ``timestamp``, ``data``); ids only."""
    rtype, rid = _focus(event)
    return {
        "type": event.event_type,
        "timestamp": fhir_instant(event.created_at),
        "data": {
            "resourceType": rtype,
            "id": rid,
            "reference": f"{rtype}/{rid}",
            **(event.payload or {}),
        },
    }


def webhook_headers(secret: str, message_id: str, body: str, at: datetime) -> dict[str, str]:
    """Standard Webhooks headers: the message id, the time and the HMAC-SHA256 signature."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, at, body),
    }


# --- sending ---------------------------------------------------------------------------


@dataclass
class DeliveryReport:
    """What one :func:`deliver` call did (counts only)."""

    events_fanned_out: int = 0
    events_queued: int = 0
    notifications: int = 0
    events_delivered: int = 0
    handshakes: int = 0
    heartbeats: int = 0
    failures: int = 0
    subscriptions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def busy(self) -> bool:
        """Whether the pass handed out or sent anything (another may find more)."""
        return bool(self.events_fanned_out or self.notifications)

    def add(self, other: DeliveryReport) -> None:
        for name in (
            "events_fanned_out",
            "events_queued",
            "notifications",
            "events_delivered",
            "handshakes",
            "heartbeats",
            "failures",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.subscriptions.extend(s for s in other.subscriptions if s not in self.subscriptions)


@dataclass(frozen=True)
class SendResult:
    ok: bool
    #: The HTTP status, or None when no answer came (timeout, refused connection).
    status_code: int | None
    error: str | None = None

    @property
    def retryable(self) -> bool:
        code = self.status_code
        return (
            code is None
            or code >= HTTP_SERVER_ERROR
            or code in RETRYABLE_4XX
            or code < HTTP_CLIENT_ERROR
        )


def post(
    client: httpx.Client, url: str, body: str, headers: dict[str, str], timeout_s: float
) -> SendResult:
    """POST one message; any exception of the transport is a failed send, never raised."""
    try:
        response = client.post(url, content=body.encode(), headers=headers, timeout=timeout_s)
    except httpx.TimeoutException:
        return SendResult(False, None, "the endpoint did not answer in time")
    except httpx.HTTPError as exc:
        return SendResult(False, None, f"the endpoint could not be reached ({type(exc).__name__})")
    if SUCCESS_FIRST <= response.status_code <= SUCCESS_LAST:
        return SendResult(True, response.status_code)
    return SendResult(False, response.status_code, f"the endpoint answered {response.status_code}")


def backoff_s(attempts: int, *, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter over the upper half, capped."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))
    return ceiling / 2 + (rng or random).random() * ceiling / 2


def _free(now: datetime) -> ColumnElement[bool]:
    """No sender holds the subscription and no backoff is running."""
    return or_(Subscription.next_attempt_at.is_(None), Subscription.next_attempt_at <= now)


def _claim(session_factory: sessionmaker[Session], sub_id: str, now: datetime) -> bool:
    with unit_of_work(session_factory) as session:
        claimed = session.execute(
            update(Subscription)
            .where(
                Subscription.id == sub_id,
                _free(now),
            )
            .values(next_attempt_at=now + timedelta(seconds=LEASE_S))
        )
        return bool(getattr(claimed, "rowcount", 0))


def numbered_events(
    session: Session, sub_id: str, first: int, last: int
) -> list[tuple[int, EventRow]]:
    """A subscription's events numbered ``first`` to ``last`` (inclusive), in order."""
    rows = session.execute(
        select(SubscriptionEvent.event_number, *EVENT_COLUMNS)
        .join(Outbox, Outbox.id == SubscriptionEvent.outbox_id)
        .where(
            SubscriptionEvent.subscription_id == sub_id,
            # Event numbers are dense (the fan-out gives 1, 2, 3... under its lock), so a
            # range of them is an index range scan whatever the planner's statistics say
            # (a "> n ORDER BY LIMIT" read and sorted the whole backlog on PostgreSQL).
            SubscriptionEvent.event_number >= first,
            SubscriptionEvent.event_number <= last,
        )
        .order_by(SubscriptionEvent.event_number)
    ).all()
    return [(row[0], EventRow(*row[1:])) for row in rows]


def _pending(session: Session, sub: Subscription, limit: int) -> list[tuple[int, EventRow]]:
    first = sub.delivered_through + 1
    return numbered_events(session, sub.id, first, first + limit - 1)


def _rendered(
    session: Session, events: Sequence[tuple[int, EventRow]], render: Render | None
) -> dict[tuple[str, str], dict[str, Any]]:
    """The resources of the events' focus, as consumers read them (those that are gone
    are left out)."""
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    if render is None:
        return resources
    for _, event in events:
        focus = _focus(event)
        if focus not in resources:
            found = render(session, *focus)
            if found is not None:
                resources[focus] = found
    return resources


def query_events(
    session: Session,
    sub: Subscription,
    *,
    since: int | None = None,
    until: int | None = None,
    content: str | None = None,
    base: str = "",
    render: Render | None = None,
) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """``$events``: the notification bundle (``query-event``) of the subscription's events
    ``since`` to ``until`` (inclusive; at most :data:`MAX_MAX_COUNT` from ``since``), and
    the resources it discloses. The events are those queued for it, acknowledged or not."""
    last = sub.events_since_start if until is None else min(until, sub.events_since_start)
    first = max(1, since if since is not None else last - MAX_MAX_COUNT + 1)
    events = numbered_events(session, sub.id, first, min(last, first + MAX_MAX_COUNT - 1))
    content = content or sub.payload_content
    resources = _rendered(session, events, render) if content == PAYLOAD_FULL else {}
    bundle = notification_bundle(
        sub, KIND_QUERY_EVENT, base=base, events=events, resources=resources, content=content
    )
    return bundle, tuple(resources)


def _timeout(sub: Subscription) -> float:
    value = _extension((sub.resource or {}).get("channel"), TIMEOUT_URL)
    return float(value) if isinstance(value, int) and value > 0 else float(DEFAULT_TIMEOUT_S)


def _channel_headers(sub: Subscription) -> dict[str, str]:
    out = {}
    for header in sub.headers or []:
        name, _, value = str(header).partition(":")
        out[name.strip()] = value.strip()
    return out


def _ended(sub: Subscription, now: datetime) -> bool:
    end = (sub.resource or {}).get("end")
    if not isinstance(end, str):
        return False
    try:
        when = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return False
    return (when if when.tzinfo else when.replace(tzinfo=now.tzinfo)) <= now


def needs_handshake(sub: Subscription) -> bool:
    return sub.channel_type == CHANNEL_REST_HOOK and (
        sub.status == STATUS_REQUESTED or (sub.status == STATUS_ERROR and sub.last_sent_at is None)
    )


def heartbeat_due(sub: Subscription, now: datetime) -> bool:
    """An active FHIR subscription with a heartbeat period that has heard nothing for it."""
    return bool(
        sub.heartbeat_s
        and sub.status == STATUS_ACTIVE
        and (
            sub.last_sent_at is None or sub.last_sent_at + timedelta(seconds=sub.heartbeat_s) <= now
        )
    )


@dataclass(frozen=True)
class Message:
    kind: str
    body: str
    headers: dict[str, str]
    #: The event number this message acknowledges when it succeeds (0: none).
    through: int
    events: int
    #: The resources a ``full-resource`` notification carries, (type, id): a disclosure of
    #: patient data, audited when the endpoint takes it.
    disclosed: tuple[tuple[str, str], ...] = ()


def _next_messages(
    session: Session,
    sub: Subscription,
    now: datetime,
    *,
    base: str,
    render: Render | None,
) -> list[Message]:
    """What ``sub`` should be sent now, in order: a webhook's next events, one message
    each; or a FHIR subscription's one notification. Empty when nothing is due."""
    if sub.channel_type == CHANNEL_WEBHOOK:
        if not sub.secret:
            return []
        messages = []
        for number, event in _pending(session, sub, WEBHOOK_BATCH):
            body = json.dumps(webhook_message(event), separators=(",", ":"))
            headers = {"Content-Type": "application/json"}
            headers.update(webhook_headers(sub.secret, f"msg_{event.id}", body, now))
            messages.append(Message(KIND_EVENT, body, headers, number, 1))
        return messages
    message = _next_notification(session, sub, now, base=base, render=render)
    return [message] if message is not None else []


def _next_notification(
    session: Session,
    sub: Subscription,
    now: datetime,
    *,
    base: str,
    render: Render | None,
) -> Message | None:
    """A FHIR subscription's next notification: its handshake, its next events or a
    heartbeat."""
    fhir_headers = {"Content-Type": "application/fhir+json", **_channel_headers(sub)}
    if needs_handshake(sub):
        bundle = notification_bundle(sub, KIND_HANDSHAKE, base=base, status=STATUS_REQUESTED)
        return Message(KIND_HANDSHAKE, json.dumps(bundle), fhir_headers, 0, 0)
    pending = _pending(session, sub, sub.max_count or DEFAULT_MAX_COUNT)
    if pending:
        resources = (
            _rendered(session, pending, render) if sub.payload_content == PAYLOAD_FULL else {}
        )
        bundle = notification_bundle(
            sub, KIND_EVENT, base=base, events=pending, resources=resources
        )
        return Message(
            KIND_EVENT,
            json.dumps(bundle),
            fhir_headers,
            pending[-1][0],
            len(pending),
            tuple(resources),
        )
    if heartbeat_due(sub, now):
        bundle = notification_bundle(sub, KIND_HEARTBEAT, base=base)
        return Message(KIND_HEARTBEAT, json.dumps(bundle), fhir_headers, 0, 0)
    return None


def _record(
    session_factory: sessionmaker[Session],
    sub_id: str,
    sent: Message | None,
    failed: SendResult | None,
    now: datetime,
) -> None:
    """Store what a round of sends did: the last message the endpoint acknowledged
    (``sent``), then the failure that ended the round (``failed``: the backoff)."""
    with unit_of_work(session_factory) as session:
        sub = session.get(Subscription, sub_id)
        if sub is None:
            return
        if sent is not None and sent.disclosed:
            _audit_disclosure(session, sub, sent)
        if sent is not None:
            if sub.status != STATUS_OFF:
                sub.status = STATUS_ACTIVE
            sub.attempts = 0
            sub.error = None
            sub.last_sent_at = now
            sub.delivered_through = max(sub.delivered_through, sent.through)
            sub.next_attempt_at = now + timedelta(seconds=LEASE_S)  # still ours
        if failed is not None:
            sub.attempts += 1
            sub.error = failed.error
            if sub.status != STATUS_OFF and (
                sub.attempts >= ERROR_AFTER_ATTEMPTS or not failed.retryable
            ):
                sub.status = STATUS_ERROR
            sub.next_attempt_at = now + timedelta(seconds=backoff_s(sub.attempts))


def _audit_disclosure(session: Session, sub: Subscription, sent: Message) -> None:
    """Audit a ``full-resource`` notification like a read: the consumer, the resources
    it was given (ids), and the subscription that gave them."""
    client_id = session.scalar(select(Consumer.client_id).where(Consumer.id == sub.consumer_id))
    by_type: dict[str, list[str]] = {}
    for rtype, rid in sent.disclosed:
        by_type.setdefault(rtype, []).append(rid)
    for rtype, ids in by_type.items():
        AuditRepository(session).record(
            client_id or f"consumer:{sub.consumer_id}",
            "notify",
            resource_type=rtype,
            resource_id=ids[0] if len(ids) == 1 else None,
            detail={"ids": ids, "subscription": sub.id},
        )


def _release(session_factory: sessionmaker[Session], sub_id: str, now: datetime) -> None:
    """Give the claim back: due again at the next look."""
    with unit_of_work(session_factory) as session:
        session.execute(
            update(Subscription)
            .where(Subscription.id == sub_id, Subscription.next_attempt_at > now)
            .values(next_attempt_at=None)
        )


def _due(session: Session, now: datetime) -> list[str]:
    """Subscriptions with something to send and no sender or backoff in the way."""
    pending = (
        select(func.max(SubscriptionEvent.event_number))
        .where(SubscriptionEvent.subscription_id == Subscription.id)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Subscription, pending)
        .join(Consumer, Consumer.id == Subscription.consumer_id)
        .where(listening(), _free(now))
        .order_by(Subscription.created_at, Subscription.id)
    ).all()
    due = []
    for sub, last in rows:
        if _ended(sub, now):
            sub.status = STATUS_OFF
            continue
        if needs_handshake(sub) or (last or 0) > sub.delivered_through or heartbeat_due(sub, now):
            due.append(sub.id)
    return due


def send_subscription(
    session_factory: sessionmaker[Session],
    sub_id: str,
    client: httpx.Client,
    report: DeliveryReport,
    *,
    deadline: datetime,
    base: str = "",
    render: Render | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> None:
    """Send what ``sub_id`` is due, round after round, until its queue is empty, a send
    fails, or ``deadline``. A round is one FHIR notification, or up to
    :data:`WEBHOOK_BATCH` webhook messages recorded together (a sender that dies in a
    round sends that round again: at least once)."""
    if not _claim(session_factory, sub_id, clock()):
        return
    report.subscriptions.append(sub_id)
    while clock() < deadline:
        with session_factory() as session:
            sub = session.get(Subscription, sub_id)
            if sub is None or sub.status == STATUS_OFF:
                break
            messages = _next_messages(session, sub, clock(), base=base, render=render)
            url = sub.endpoint
            timeout = _timeout(sub)
        if not messages:
            break
        sent: Message | None = None
        failed: SendResult | None = None
        for message in messages:
            result = post(client, url, message.body, message.headers, timeout)
            if not result.ok:
                failed = result
                log.warning(
                    "delivery failed",
                    extra={
                        "subscription": sub_id,
                        "kind": message.kind,
                        "status": result.status_code,
                    },
                )
                break
            sent = message
            report.notifications += 1
            report.events_delivered += message.events
            if message.kind == KIND_HANDSHAKE:
                report.handshakes += 1
            elif message.kind == KIND_HEARTBEAT:
                report.heartbeats += 1
        _record(session_factory, sub_id, sent, failed, clock())
        if failed is not None:
            report.failures += 1
            return  # the backoff holds the claim
    _release(session_factory, sub_id, clock())


def deliver(
    session_factory: sessionmaker[Session],
    *,
    client: httpx.Client | None = None,
    base: str = "",
    render: Render | None = None,
    max_seconds: float = DEFAULT_DELIVER_S,
    clock: Callable[[], datetime] = utcnow,
) -> DeliveryReport:
    """Hand out the outbox's new events, then send every due subscription its messages,
    for at most ``max_seconds``."""
    report = DeliveryReport()
    deadline = clock() + timedelta(seconds=max_seconds)
    while clock() < deadline:
        with unit_of_work(session_factory) as session:
            step = fan_out(session, now=clock())
        report.events_fanned_out += step.events
        report.events_queued += step.queued
        if step.events < FAN_OUT_BATCH:
            break
    with unit_of_work(session_factory) as session:
        due = _due(session, clock())
    if not due:
        return report
    own = client is None
    http = client or httpx.Client(follow_redirects=False)
    try:
        for sub_id in due:
            if clock() >= deadline:
                break
            send_subscription(
                session_factory,
                sub_id,
                http,
                report,
                deadline=deadline,
                base=base,
                render=render,
                clock=clock,
            )
    finally:
        if own:
            http.close()
    if report.notifications or report.failures:
        log.info(
            "delivered",
            extra={
                "notifications": report.notifications,
                "events": report.events_delivered,
                "failures": report.failures,
            },
        )
    return report


def deliver_with(context: TaskContext, *, max_seconds: float = DEFAULT_DELIVER_S) -> DeliveryReport:
    """:func:`deliver` with what the process's task context wired (base URL, rendering)."""
    return deliver(
        context.session_factory,
        base=context.fhir_base,
        render=context.render_focus,
        max_seconds=max_seconds,
    )


def subscription_status(sub: Subscription, *, base: str = "") -> dict[str, Any]:
    """``$status``: a searchset Bundle with the subscription's status Parameters."""
    params = status_parameters(sub, KIND_QUERY_STATUS, base=base)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "total": 1,
        "entry": [
            {
                "fullUrl": f"urn:uuid:{params['id']}",
                "resource": params,
                "search": {"mode": "match"},
            }
        ],
    }
