"""The Subscriptions askonce keeps on its sources' EHRs.

``askonce sources subscribe NAME`` creates, on the source's FHIR server, the Subscriptions
that push its changes to our intake (:mod:`connectors.subscriptions`; the notifications
are :mod:`sync.intake`'s). Each one we created is remembered as a ``sync_cursor`` state row
(``$sub:<digest of its id>``) with what it asks for, its heartbeat period and what the EHR
last said of it.

Their watch, the scheduler tick's look at each of them, is :mod:`sync.ehr_watch`.

Without named topics or criteria, :func:`subscribe` chooses them (:class:`Plan`): for each
type the source syncs, a topic whose definition says it pushes every create and update of
that type (:mod:`connectors.topics`), else a classic ``Type?`` criteria.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from connectors import ConnectorError, RestSource, Source, SourceConfig, build_source
from connectors.subscriptions import (
    EhrSubscriptions,
    SubscriptionRequest,
    SubscriptionRequestError,
)
from connectors.topics import TopicChoice, choose_topics, read_topics
from store import CursorRepository, SourceRepository
from store.models import Source as SourceRow
from store.models import SyncCursor
from store.types import as_utc, utcnow
from sync.intake import PUSH_STATE_PREFIX, hash_intake_token, parse_reference
from sync.runner import INTAKE_TOKEN_KEY, SourceUnavailableError, SyncError, source_config

log = logging.getLogger(__name__)

#: ``sync_cursor.resource_type`` prefix of a Subscription askonce created on the EHR.
SUBSCRIPTION_STATE_PREFIX = "$sub:"
SUBSCRIPTION_KEY_CHARS = 16
#: Heartbeat periods that may pass without a notification before the Subscription is read.
MISSED_HEARTBEATS = 2
#: Statuses the watch records besides the EHR's own.
STATUS_GONE = "gone"
STATUS_UNREACHABLE = "unreachable"


class SubscribeError(SyncError):
    """A subscription askonce cannot make for this source (the reason says why)."""


@dataclass
class Managed:
    """A Subscription askonce created on a source's EHR, as last seen."""

    source_id: int
    id: str
    what: str
    content: str
    heartbeat_s: int | None
    endpoint: str
    created_at: datetime
    checked_at: datetime | None = None
    status: str | None = "requested"
    error: str | None = None
    #: When one of its notifications last arrived (from the intake's state rows).
    heard_at: datetime | None = None
    #: Made elsewhere (by hand on the EHR), found by its notifications and watched like
    #: ours; askonce never deletes it unless told to by its id.
    adopted: bool = False
    #: How its notifications name it (from the intake's state rows), if they came.
    reference: str | None = None

    @property
    def topic_based(self) -> bool:
        """Its ``criteria`` is a topic's canonical URL, not a ``Type?params`` search."""
        return self.what.startswith(("http://", "https://", "urn:"))

    @property
    def key(self) -> str:
        return subscription_key(self.id)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "what": self.what,
            "content": self.content,
            "heartbeat_s": self.heartbeat_s,
            "endpoint": self.endpoint,
            "created_at": self.created_at.isoformat(),
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "status": self.status,
            "error": self.error,
            "adopted": self.adopted,
        }

    def as_dict(self) -> dict[str, Any]:
        """For the admin API and the CLI: the stored state and when it was last heard from."""
        return {**self.as_json(), "heard_at": self.heard_at.isoformat() if self.heard_at else None}

    def overdue(self, now: datetime) -> bool:
        """Silent for more than :data:`MISSED_HEARTBEATS` heartbeat periods."""
        if not self.heartbeat_s:
            return False
        since = max(filter(None, (self.heard_at, self.created_at)))
        return now - since > timedelta(seconds=MISSED_HEARTBEATS * self.heartbeat_s)

    def due(self, now: datetime, interval_s: float) -> bool:
        """Whether the watch should read it now (one made elsewhere that the EHR no longer
        has is not read again: it was deleted on purpose, or replaced)."""
        if self.adopted and self.status == STATUS_GONE:
            return False
        if self.checked_at is None:
            return True
        if self.status == "requested" and self.heard_at and self.heard_at > self.checked_at:
            return True  # a handshake came: the EHR has made it active (or not) since
        waited = (now - self.checked_at).total_seconds()
        if waited >= interval_s:
            return True
        return self.overdue(now) and waited >= (self.heartbeat_s or interval_s)


def subscription_key(subscription_id: str) -> str:
    digest = hashlib.sha256(subscription_id.encode()).hexdigest()[:SUBSCRIPTION_KEY_CHARS]
    return SUBSCRIPTION_STATE_PREFIX + digest


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        return None


def _from_row(row: SyncCursor) -> Managed | None:
    try:
        data = json.loads(row.cursor or "")
    except ValueError:
        return None
    if not isinstance(data, dict) or not data.get("id"):
        return None
    created = _time(data.get("created_at"))
    if created is None:
        return None
    heartbeat = data.get("heartbeat_s")
    return Managed(
        source_id=row.source_id,
        id=str(data["id"]),
        what=str(data.get("what") or ""),
        content=str(data.get("content") or ""),
        heartbeat_s=int(heartbeat) if isinstance(heartbeat, int) else None,
        endpoint=str(data.get("endpoint") or ""),
        created_at=created,
        checked_at=_time(data.get("checked_at")),
        status=data.get("status"),
        error=data.get("error"),
        adopted=data.get("adopted") is True,
    )


def state_rows(session: Session, source_id: int | None = None) -> list[SyncCursor]:
    """The sources' state rows (of one source, or of all): ours and the intake's."""
    stmt = select(SyncCursor).where(SyncCursor.resource_type.startswith("$"))
    if source_id is not None:
        stmt = stmt.where(SyncCursor.source_id == source_id)
    return list(session.scalars(stmt.order_by(SyncCursor.source_id, SyncCursor.resource_type)))


def managed(session: Session, source_id: int | None = None) -> list[Managed]:
    """The Subscriptions askonce created or watches (of one source, or of all), with when
    each was last heard from."""
    return read_managed(state_rows(session, source_id))


@dataclass(frozen=True)
class Heard:
    """A Subscription the intake took notifications of (its ``$push:`` state row)."""

    source_id: int
    id: str
    #: The notification's reference to it, as sent (relative or absolute).
    reference: str
    #: When its last notification arrived (None: only its ``$status`` was read).
    at: datetime | None
    #: The state row's key.
    key: str


def heard_from(rows: Sequence[SyncCursor]) -> dict[tuple[int, str], Heard]:
    """The Subscriptions that notified us, by (source id, Subscription id), from the
    intake's state rows among ``rows``."""
    heard: dict[tuple[int, str], Heard] = {}
    for row in rows:
        if not row.resource_type.startswith(PUSH_STATE_PREFIX):
            continue
        try:
            state = json.loads(row.cursor or "{}")
            reference = state.get("subscription")
        except (ValueError, AttributeError):
            continue
        parsed = parse_reference(reference if isinstance(reference, str) else None)
        if parsed and parsed[0] == "Subscription":
            # Rows kept before "heard_at" were heard when last written.
            at = _time(state["heard_at"]) if "heard_at" in state else as_utc(row.updated_at)
            heard[(row.source_id, parsed[1])] = Heard(
                row.source_id, parsed[1], str(reference), at, row.resource_type
            )
    return heard


def read_managed(rows: Sequence[SyncCursor]) -> list[Managed]:
    """:func:`managed` from a source's state rows already read (the admin list)."""
    heard = heard_from(rows)
    out = []
    for row in rows:
        if row.resource_type.startswith(SUBSCRIPTION_STATE_PREFIX):
            item = _from_row(row)
            if item is not None:
                last = heard.get((row.source_id, item.id))
                item.heard_at = last.at if last else None
                item.reference = last.reference if last else None
                out.append(item)
    return out


def save(session: Session, item: Managed) -> None:
    """Record what is known of a Subscription askonce created."""
    CursorRepository(session).set(item.source_id, item.key, json.dumps(item.as_json()))


def _offered(source: RestSource, wanted: Sequence[SubscriptionRequest]) -> None:
    """A topic the server does not list among those it offers is refused before anything
    is created (a server that lists none is taken at its word, which is no word)."""
    offered = source.capabilities().subscription_topics
    unknown = sorted({r.topic for r in wanted if r.topic and offered and r.topic not in offered})
    if unknown:
        raise SubscribeError(
            f"the EHR does not offer the topic {unknown[0]};"
            f" it offers: {', '.join(sorted(offered))}"
        )


def _forget(session: Session, item: Managed) -> None:
    """Forget a Subscription: its state and the intake's event numbers of it (which would
    otherwise make the watch take it for one made elsewhere)."""
    keys = [item.key]
    keys += [
        h.key for h in heard_from(state_rows(session, item.source_id)).values() if h.id == item.id
    ]
    for key in keys:
        row = session.get(SyncCursor, (item.source_id, key))
        if row is not None:
            session.delete(row)


def _named(session: Session, name: str) -> SourceRow:
    try:
        return SourceRepository(session).get_by_name(name)
    except LookupError as exc:
        raise SourceUnavailableError(f"no source named {name!r}") from exc


def rest_source(source: Source) -> RestSource:
    if not isinstance(source, RestSource):
        raise SubscribeError("only a FHIR server's source can hold Subscriptions")
    return source


@dataclass(frozen=True)
class Plan:
    """What ``subscribe`` asks the EHR for, and where the notifications go.

    Named ``topics`` and ``criteria`` are asked for as given. With neither, askonce
    chooses (:meth:`requests` with the EHR's :class:`~connectors.topics.TopicChoice`): for
    each type the source syncs, a topic the EHR offers that pushes every create and
    update of it (its events are numbered, so a lost one shows), else a classic
    ``Type?`` criteria. ``content`` applies to every request it fits; an ``id-only``
    payload, which classic Subscriptions do not have, leaves the classic ones to their
    default (the resource). ``heartbeat_s`` and ``filters`` apply to the topics, and
    ``filters`` only to named ones (a filter is written for one topic)."""

    endpoint: str
    topics: tuple[str, ...] = ()
    criteria: tuple[str, ...] = ()
    content: str = ""
    heartbeat_s: int | None = None
    filters: tuple[str, ...] = ()

    @property
    def automatic(self) -> bool:
        return not self.topics and not self.criteria

    def requests(
        self, token: str, resource_types: Sequence[str], choice: TopicChoice | None = None
    ) -> list[SubscriptionRequest]:
        """The Subscriptions to create (raises :class:`SubscriptionRequestError` for one
        that cannot be asked). Automatic without a ``choice``: classic ones only."""
        topics, searches, classic_content = list(self.topics), list(self.criteria), self.content
        if self.filters and not self.topics:
            raise SubscriptionRequestError("a filter belongs to a topic: name it with --topic")
        if self.automatic:
            topics = choice.urls if choice else []
            uncovered = choice.uncovered if choice else resource_types
            searches = [f"{rtype}?" for rtype in uncovered]
            classic_content = "" if self.content == "id-only" else self.content
        made = [
            SubscriptionRequest(
                endpoint=self.endpoint,
                token=token,
                topic=url,
                content=self.content,
                heartbeat_s=self.heartbeat_s,
                filters=self.filters,
            )
            for url in topics
        ]
        return made + [
            SubscriptionRequest(
                endpoint=self.endpoint, token=token, criteria=q, content=classic_content
            )
            for q in searches
        ]


@dataclass
class Subscribed:
    """What ``subscribe`` did."""

    created: list[Managed] = field(default_factory=list)
    #: Asked for again while askonce's Subscription for it is there: left as it is.
    kept: list[Managed] = field(default_factory=list)
    #: Whether the token became the source's intake token (push intake switched on).
    token_set: bool = False
    #: What an automatic plan chose: the topic of each type, and the types no topic covers
    #: (None when the plan named its topics or criteria).
    choice: TopicChoice | None = None
    #: An automatic plan could not read the EHR's topic definitions (the error's type).
    topics_unread: str | None = None
    #: The source syncs on a schedule (which reads what unnumbered notifications lose).
    scheduled: bool = False


def _choose(plan: Plan, source: RestSource, types: Sequence[str], done: Subscribed) -> None:
    """An automatic plan's topics: those of the EHR's definitions that cover a type. The
    definitions are only read if the server takes Subscriptions at all."""
    if not plan.automatic or not source.capabilities().supports("Subscription"):
        return
    try:
        topics = read_topics(source)
    except ConnectorError as exc:
        done.topics_unread = type(exc).__name__
        topics = []
    done.choice = choose_topics(topics, types, source.capabilities().subscription_topics)


def subscribe(
    session_factory: sessionmaker[Session],
    name: str,
    token: str,
    plan: Plan,
    *,
    source_factory: Callable[..., Source] = build_source,
) -> Subscribed:
    """Create Subscriptions on the EHR of source ``name``, pushing to our intake with
    ``token``: the source's intake token, or its first one (push intake is then switched
    on). ``plan`` says what to create (its topics are chosen here when it names none).
    Every request is checked before anything changes. The token is committed before the
    first Subscription exists, since a topic-based one handshakes at once; each one
    created is committed as soon as the EHR answers, so a failure half-way leaves none
    unknown. Asking again is safe: a topic or criteria askonce already has a
    Subscription for, at that endpoint, is left as it is, unless the EHR deleted it
    (``gone``), which is created again."""
    done = Subscribed()
    with session_factory() as session:
        source = _named(session, name)
        types = list(source.resource_types)
        plan.requests(token, types)  # raises before anything changes
        existing = {(m.what, m.endpoint): m for m in managed(session, source.id)}
        if source.removing_since is not None or not source.enabled:
            raise SourceUnavailableError(f"source {name!r} is disabled")
        expected = (source.config or {}).get(INTAKE_TOKEN_KEY)
        if expected and not hmac.compare_digest(hash_intake_token(token), str(expected)):
            raise SubscribeError(
                "the token is not this source's intake token (give the one it was added with)"
            )
        source_id, config = source.id, source_config(source)
        done.scheduled = bool(source.schedule)
    connector = source_factory(config)
    try:
        rest = rest_source(connector)
        _choose(plan, rest, types, done)
        wanted = plan.requests(token, types, done.choice)
        _offered(rest, wanted)
        if not expected:
            with session_factory() as session:
                row = session.get(SourceRow, source_id)
                if row is None:
                    raise SourceUnavailableError(f"source {name!r} is gone")
                row.config = {**(row.config or {}), INTAKE_TOKEN_KEY: hash_intake_token(token)}
                session.commit()
            done.token_set = True
        ehr = EhrSubscriptions(rest)
        for request in wanted:
            before = existing.get((request.what, request.endpoint))
            if before is not None and before.status != STATUS_GONE:
                done.kept.append(before)
                continue
            state = ehr.create(request)
            if not state.live:
                state = ehr.read(state.id)  # a server may refuse it once stored
            if not state.live:
                ehr.delete(state.id)
                raise SubscribeError(
                    f"the EHR did not take the Subscription to {request.what}"
                    f" ({state.status or 'gone'}): {state.error or 'no reason given'}"
                )
            item = Managed(
                source_id=source_id,
                id=state.id,
                what=request.what,
                content=request.content,
                heartbeat_s=request.heartbeat_s,
                endpoint=request.endpoint,
                created_at=utcnow(),
                status=state.status,
                error=state.error,
            )
            with session_factory() as session:
                if before is not None and before.key != item.key:
                    _forget(session, before)
                save(session, item)
                session.commit()
            done.created.append(item)
            log.info(
                "ehr subscription created",
                extra={"source_id": source_id, "status": state.status},
            )
    finally:
        connector.close()
    return done


def unsubscribe(
    session_factory: sessionmaker[Session],
    name: str,
    ids: Sequence[str] = (),
    *,
    source_factory: Callable[..., Source] = build_source,
) -> list[Managed]:
    """Delete the Subscriptions askonce created on the source's EHR (``ids``, or all) and
    forget them. One the EHR no longer has is forgotten too. One made elsewhere, which
    askonce only watches, is deleted only when named by its id."""
    with session_factory() as session:
        source = _named(session, name)
        items = [m for m in managed(session, source.id) if m.id in ids or not (ids or m.adopted)]
        unknown = sorted(set(ids) - {m.id for m in items})
        if unknown:
            raise SubscribeError(f"askonce did not create Subscription {unknown[0]!r} here")
        config = source_config(source)
    return _delete(session_factory, config, items, source_factory, strict=True)


def release(
    session_factory: sessionmaker[Session],
    source_id: int,
    *,
    source_factory: Callable[..., Source] = build_source,
) -> int:
    """A source is being removed: delete the Subscriptions askonce created on its EHR, so
    that it stops notifying an endpoint that will answer 404. Best effort: one the EHR
    cannot delete now is logged by type (its state goes with the source). Returns how
    many were deleted."""
    with session_factory() as session:
        items = [m for m in managed(session, source_id) if not m.adopted]
        source = session.get(SourceRow, source_id) if items else None
        config = source_config(source) if source is not None else None
    if config is None:
        return 0
    return len(_delete(session_factory, config, items, source_factory, strict=False))


def _delete(
    session_factory: sessionmaker[Session],
    config: SourceConfig,
    items: Sequence[Managed],
    source_factory: Callable[..., Source],
    *,
    strict: bool,
) -> list[Managed]:
    if not items:
        return []
    deleted: list[Managed] = []
    connector = source_factory(config)
    try:
        ehr = EhrSubscriptions(rest_source(connector))
        for item in items:
            try:
                ehr.delete(item.id)
            except ConnectorError as exc:
                if strict:
                    raise
                log.warning(
                    "ehr subscription not deleted",
                    extra={"source_id": item.source_id, "error": type(exc).__name__},
                )
                continue
            with session_factory() as session:
                _forget(session, item)
                session.commit()
            deleted.append(item)
    finally:
        connector.close()
    return deleted
