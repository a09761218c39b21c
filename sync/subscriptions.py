"""The Subscriptions askonce keeps on its sources' EHRs, and their watch.

``askonce sources subscribe NAME`` creates, on the source's FHIR server, the Subscriptions
that push its changes to our intake (:mod:`connectors.subscriptions`; the notifications
are :mod:`sync.intake`'s). Each one we created is remembered as a ``sync_cursor`` state row
(``$sub:<digest of its id>``) with what it asks for, its heartbeat period and what the EHR
last said of it.

An EHR stops notifying a Subscription whose notifications failed (the Subscriptions
Backport lets it put one in ``error``; askonce was restarting, the network was down),
and nothing tells us so. :func:`watch` is the scheduler tick's look at each of them, every
``subscription_check_s``, or sooner when a heartbeat is overdue:

* ``active`` (or ``requested``) and heard from: nothing to do;
* ``active`` but silent past two heartbeat periods: notifications are lost on the way,
  so a catch-up sync is owed (:mod:`sync.catchup`);
* ``error`` or ``off``: a catch-up is owed (what it did not send), and the Subscription is
  asked to start again (``requested``; a topic-based one handshakes again). One whose
  header the server does not give back is left for the operator to subscribe again;
* gone from the server: a catch-up is owed, and the operator subscribes again;
* the server cannot be reached: nothing changes (its syncs fail and say so).

The owed catch-up is then started by the same tick.
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
from connectors.subscriptions import EhrSubscriptions, SubscriptionRequest
from store import CursorRepository, SourceRepository
from store.models import Source as SourceRow
from store.models import SyncCursor
from store.types import as_utc, utcnow
from sync import catchup
from sync.context import TaskContext
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
        """Whether the watch should read it now."""
        if self.checked_at is None:
            return True
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
    )


def managed(session: Session, source_id: int | None = None) -> list[Managed]:
    """The Subscriptions askonce created (of one source, or of all), with when each was
    last heard from."""
    stmt = select(SyncCursor).where(SyncCursor.resource_type.startswith("$"))
    if source_id is not None:
        stmt = stmt.where(SyncCursor.source_id == source_id)
    rows = list(session.scalars(stmt.order_by(SyncCursor.source_id, SyncCursor.resource_type)))
    return read_managed(rows)


def read_managed(rows: Sequence[SyncCursor]) -> list[Managed]:
    """:func:`managed` from a source's state rows already read (the admin list)."""
    heard: dict[tuple[int, str], datetime] = {}
    for row in rows:
        if not row.resource_type.startswith(PUSH_STATE_PREFIX):
            continue
        try:
            reference = json.loads(row.cursor or "{}").get("subscription")
        except (ValueError, AttributeError):
            continue
        parsed = parse_reference(reference if isinstance(reference, str) else None)
        if parsed and parsed[0] == "Subscription":
            heard[(row.source_id, parsed[1])] = row.updated_at
    out = []
    for row in rows:
        if row.resource_type.startswith(SUBSCRIPTION_STATE_PREFIX):
            item = _from_row(row)
            if item is not None:
                item.heard_at = heard.get((row.source_id, item.id))
                out.append(item)
    return out


def _save(session: Session, item: Managed) -> None:
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
    row = session.get(SyncCursor, (item.source_id, item.key))
    if row is not None:
        session.delete(row)


def _named(session: Session, name: str) -> SourceRow:
    try:
        return SourceRepository(session).get_by_name(name)
    except LookupError as exc:
        raise SourceUnavailableError(f"no source named {name!r}") from exc


def _rest_source(source: Source) -> RestSource:
    if not isinstance(source, RestSource):
        raise SubscribeError("only a FHIR server's source can hold Subscriptions")
    return source


@dataclass
class Subscribed:
    """What ``subscribe`` did."""

    created: list[Managed] = field(default_factory=list)
    #: Asked for again while askonce's Subscription for it is there: left as it is.
    kept: list[Managed] = field(default_factory=list)
    #: Whether the token became the source's intake token (push intake switched on).
    token_set: bool = False


def subscribe(
    session_factory: sessionmaker[Session],
    name: str,
    token: str,
    requests: Callable[[str], Sequence[SubscriptionRequest]],
    *,
    source_factory: Callable[..., Source] = build_source,
) -> Subscribed:
    """Create Subscriptions on the EHR of source ``name``, pushing to our intake with
    ``token``: the source's intake token, or its first one (push intake is then switched
    on). ``requests(token)`` gives what to create. The token is committed before the
    first Subscription exists, since a topic-based one handshakes at once; each one
    created is committed as soon as the EHR answers, so a failure half-way leaves none
    unknown. Asking again is safe: a topic or criteria askonce already has a
    Subscription for, at that endpoint, is left as it is, unless the EHR deleted it
    (``gone``), which is created again."""
    done = Subscribed()
    with session_factory() as session:
        source = _named(session, name)
        existing = {(m.what, m.endpoint): m for m in managed(session, source.id)}
        if source.removing_since is not None or not source.enabled:
            raise SourceUnavailableError(f"source {name!r} is disabled")
        expected = (source.config or {}).get(INTAKE_TOKEN_KEY)
        if expected and not hmac.compare_digest(hash_intake_token(token), str(expected)):
            raise SubscribeError(
                "the token is not this source's intake token (give the one it was added with)"
            )
        if not expected:
            source.config = {**(source.config or {}), INTAKE_TOKEN_KEY: hash_intake_token(token)}
            session.commit()
            done.token_set = True
        source_id, config = source.id, source_config(source)
    wanted = list(requests(token))
    connector = source_factory(config)
    try:
        ehr = EhrSubscriptions(_rest_source(connector))
        _offered(_rest_source(connector), wanted)
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
                _save(session, item)
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
    forget them. One the EHR no longer has is forgotten too."""
    with session_factory() as session:
        source = _named(session, name)
        items = [m for m in managed(session, source.id) if not ids or m.id in ids]
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
        items = managed(session, source_id)
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
        ehr = EhrSubscriptions(_rest_source(connector))
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


@dataclass
class Watched:
    """What one look at a Subscription found, and what it did about it."""

    source_id: int
    id: str
    status: str | None
    owed: bool = False
    reactivated: bool = False


def watch(
    context: TaskContext,
    *,
    now: datetime | None = None,
    source_factory: Callable[..., Source] = build_source,
) -> list[Watched]:
    """Read each due Subscription askonce created on an enabled source's EHR and act on
    what it says (see the module). Network calls hold no database transaction."""
    now = now or utcnow()
    with context.session_factory() as session:
        enabled = dict(
            session.execute(
                select(SourceRow.id, SourceRow).where(
                    SourceRow.enabled.is_(True), SourceRow.removing_since.is_(None)
                )
            ).all()
        )
        due = [
            m
            for m in managed(session)
            if m.source_id in enabled and m.due(now, context.subscription_check_s)
        ]
        configs = {m.source_id: source_config(enabled[m.source_id]) for m in due}
        tokens = {
            m.source_id: (enabled[m.source_id].config or {}).get(INTAKE_TOKEN_KEY) for m in due
        }
    out: list[Watched] = []
    for source_id, config in configs.items():
        items = [m for m in due if m.source_id == source_id]
        expected = str(tokens[source_id] or "")

        def holds(token: str, expected: str = expected) -> bool:
            return bool(expected) and hmac.compare_digest(hash_intake_token(token), expected)

        try:
            connector = source_factory(config)
        except (ConnectorError, ValueError) as exc:
            log.warning(
                "ehr subscriptions not checked",
                extra={"source_id": source_id, "error": type(exc).__name__},
            )
            continue
        try:
            ehr = EhrSubscriptions(_rest_source(connector))
            for item in items:
                out.append(_look(context, ehr, item, now, holds))
        finally:
            connector.close()
    return out


def _look(
    context: TaskContext,
    ehr: EhrSubscriptions,
    item: Managed,
    now: datetime,
    holds: Callable[[str], bool],
) -> Watched:
    silent = item.overdue(now)
    try:
        state = ehr.read(item.id)
    except ConnectorError as exc:
        item.status, item.error = STATUS_UNREACHABLE, type(exc).__name__
        state = None
    seen = Watched(item.source_id, item.id, item.status)
    if state is not None:
        stopped = not state.live
        seen.owed = stopped or silent
        item.status, item.error = state.status or STATUS_GONE, state.error
        if stopped and state.status is not None:
            try:
                again = ehr.reactivate(item.id, holds)
            except ConnectorError as exc:
                item.error = f"not restarted: {type(exc).__name__}"
            else:
                item.status, item.error = again.status or STATUS_GONE, again.error
                seen.reactivated = again.live
        seen.status = item.status
    item.checked_at = now
    with context.session_factory() as session:
        if seen.owed:
            catchup.owe(session, item.source_id, now=now)
        _save(session, item)
        session.commit()
    level = logging.WARNING if seen.owed else logging.DEBUG
    log.log(
        level,
        "ehr subscription checked",
        extra={
            "source_id": item.source_id,
            "status": item.status,
            "reason": "silent" if silent else None,
            "event": "reactivated" if seen.reactivated else None,
        },
    )
    return seen
