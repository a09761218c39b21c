"""The watch over the Subscriptions askonce keeps on its sources' EHRs
(:mod:`sync.subscriptions`).

An EHR stops notifying a Subscription whose notifications failed (the Subscriptions
Backport lets it put one in ``error``; askonce was restarting, the network was down),
and nothing tells us so. :func:`watch` is the scheduler tick's look at each of them, every
``subscription_check_s``, or sooner when a heartbeat is overdue:

* ``active`` (or ``requested``) and heard from: nothing to do, unless its ``$status``
  (Subscriptions Backport, for a topic-based one on a server that offers the operation)
  counts more events than the intake received: those notifications were lost without the
  EHR noticing (a proxy dropped them, or askonce's database was restored from a backup),
  so a catch-up is owed, at the next look rather than at the next event. The count becomes
  the last event seen (owed once), and reading it is not hearing from the Subscription.
  The count is compared under the source's lock, as the intake writes the last event: a
  notification being taken in is counted first (one still on the wire may still owe a
  catch-up it did not need);
* ``active`` but silent past two heartbeat periods: notifications are lost on the way,
  so a catch-up sync is owed (:mod:`sync.catchup`);
* ``error`` or ``off``: a catch-up is owed (what it did not send), and the Subscription is
  asked to start again (``requested``; a topic-based one handshakes again). One whose
  header the server does not give back is left for the operator to subscribe again;
* gone from the server: a catch-up is owed, and the operator subscribes again;
* the server cannot be reached: nothing changes (its syncs fail and say so).

A Subscription made by hand on the EHR is watched the same way once it has notified us:
the intake kept its event numbers, under the reference the notifications gave (one on the
source's own server), so the watch reads it, records what it asks for and keeps it
(``adopted``). An EHR that stopped one would otherwise send nothing more, and nothing
would show the loss. askonce never deletes one it did not make, unless told to by its id,
and one the EHR no longer has is not read again.

The owed catch-up is then started by the same tick. A Subscription left ``requested``
(just created or restarted) is read again at the next tick after a notification came (its
handshake), so what operators see is the status the EHR gave it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from connectors import ConnectorError, Source, build_source
from connectors.config import SERVER_KINDS
from connectors.subscriptions import EhrSubscriptions
from store.models import Source as SourceRow
from store.types import utcnow
from sync import catchup
from sync.context import TaskContext
from sync.intake import NotificationError, hash_intake_token, note_status
from sync.runner import INTAKE_TOKEN_KEY, lock_source, source_config
from sync.subscriptions import (
    STATUS_GONE,
    STATUS_UNREACHABLE,
    Heard,
    Managed,
    heard_from,
    read_managed,
    rest_source,
    save,
    state_rows,
)

log = logging.getLogger(__name__)


@dataclass
class Watched:
    """What one look at a Subscription found, and what it did about it."""

    source_id: int
    id: str
    status: str | None
    owed: bool = False
    reactivated: bool = False
    #: Its ``$status`` counted events that never arrived.
    lost: bool = False


def watch(
    context: TaskContext,
    *,
    now: datetime | None = None,
    source_factory: Callable[..., Source] = build_source,
) -> list[Watched]:
    """Read each due Subscription askonce created on an enabled source's EHR, and each
    one made elsewhere that notified us from it, and act on what it says (see the
    module). Network calls hold no database transaction."""
    now = now or utcnow()
    with context.session_factory() as session:
        enabled = dict(
            session.execute(
                select(SourceRow.id, SourceRow).where(
                    SourceRow.enabled.is_(True), SourceRow.removing_since.is_(None)
                )
            ).all()
        )
        rows = state_rows(session)
        known = read_managed(rows)
        ours = {(m.source_id, m.id) for m in known}
        strays = [
            _adopted(heard, now)
            for key, heard in heard_from(rows).items()
            if key not in ours
            and heard.source_id in enabled
            and _on_server(heard.reference, enabled[heard.source_id])
        ]
        due = [
            m
            for m in [*known, *strays]
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
            ehr = EhrSubscriptions(rest_source(connector))
            for item in items:
                out.append(_look(context, ehr, item, now, holds))
        finally:
            connector.close()
    return out


def _on_server(reference: str, source: SourceRow) -> bool:
    """Whether a notification's Subscription reference names one on the source's own FHIR
    server (a relative one does; an absolute one must start with its base URL)."""
    if source.kind not in SERVER_KINDS:
        return False
    if "://" not in reference:
        return True
    base = reference.split("/Subscription/")[0].rstrip("/")
    return base == str(source.base_url or "").rstrip("/")


def _adopted(heard: Heard, now: datetime) -> Managed:
    """A Subscription made elsewhere that notified us, to be read (and kept) like ours."""
    return Managed(
        source_id=heard.source_id,
        id=heard.id,
        what="",
        content="",
        heartbeat_s=None,
        endpoint="",
        created_at=now,
        checked_at=None,
        status=None,
        heard_at=heard.at,
        adopted=True,
        reference=heard.reference,
    )


def _count(ehr: EhrSubscriptions, item: Managed) -> dict[str, Any] | None:
    """An active topic-based Subscription's ``$status``, whose count of events shows the
    notifications lost on the way, where no heartbeat or later event would show them
    (yet); None when the server does not offer it or cannot answer now."""
    if not item.topic_based:
        return None
    try:
        return ehr.status(item.id)
    except ConnectorError as exc:
        log.warning(
            "ehr subscription status not read",
            extra={
                "source_id": item.source_id,
                "subscription": item.id,
                "error": type(exc).__name__,
            },
        )
        return None


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
    if state is not None and item.adopted and state.status is not None:
        item.what = state.what or item.what
        item.endpoint = state.endpoint or item.endpoint
        item.content = state.content or item.content
        item.heartbeat_s = state.heartbeat_s
    if item.adopted and item.checked_at is None:
        log.info("ehr subscription adopted", extra={"source_id": item.source_id})
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
    counted = _count(ehr, item) if state is not None and state.status == "active" else None
    item.checked_at = now
    with context.session_factory() as session:
        # As a notification's intake does: its count and ours are read and written whole.
        lock_source(session, item.source_id)
        if seen.owed:
            catchup.owe(session, item.source_id, now=now)
        if counted is not None:
            try:
                seen.lost = note_status(
                    session, item.source_id, counted, reference=item.reference, now=now
                )
            except NotificationError:
                log.warning(
                    "ehr subscription status unreadable",
                    extra={"source_id": item.source_id, "subscription": item.id},
                )
            seen.owed = seen.owed or seen.lost
        save(session, item)
        session.commit()
    level = logging.WARNING if seen.owed else logging.DEBUG
    log.log(
        level,
        "ehr subscription checked",
        extra={
            "source_id": item.source_id,
            "status": item.status,
            "reason": "silent" if silent else "events lost" if seen.lost else None,
            "event": "reactivated" if seen.reactivated else None,
        },
    )
    return seen
