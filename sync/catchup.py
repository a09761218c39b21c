"""Catch-up syncs a source owes: a gap in its push notifications is never forgotten.

A jump in a subscription's event numbers (or an R4 classic ping) means the source
changed something we were not told about. The notification's transaction records that
a catch-up is owed (:func:`owe`), with the time; the sync it starts at once reads what
was missed. Only a run that *started after* that time and finished ``ok`` settles the
debt (:func:`settle`): a run already in flight may have read past the missed change
(when it finishes, the next run starts at once), and a run that failed (the EHR down,
its token refused) read nothing.

Until then the source counts as due (:func:`sync.scheduling.due_sources`), with or
without a schedule: beat's tick, or the embedded server's scheduler, starts another
catch-up, at most every ``stall_after_s`` after a failed one. So a catch-up lost with
its worker, or one that ran out of retries while the EHR was down, is made up when it
comes back, instead of waiting for the next gap.

The debt is a ``sync_cursor`` row of its own (:data:`CATCH_UP_KEY`), beside the
subscriptions' event numbers; clearing a source's read positions (a full run, a new
URL) keeps both (:meth:`store.CursorRepository.clear`).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from store import CursorRepository
from store.models import SyncCursor, SyncRun
from store.types import utcnow

log = logging.getLogger(__name__)

#: ``sync_cursor.resource_type`` of a source's owed catch-up. State rows start with "$".
CATCH_UP_KEY = "$catch-up"


def read_debt(value: str | None) -> datetime | None:
    """The time in a :data:`CATCH_UP_KEY` row's value (None: unreadable)."""
    if not value:
        return None
    try:
        at = json.loads(value).get("at")
        return datetime.fromisoformat(at) if isinstance(at, str) else None
    except (ValueError, AttributeError):
        return None


def owe(session: Session, source_id: int, *, now: datetime | None = None) -> datetime:
    """Record that the source owes a catch-up sync from ``now`` on (the caller commits)."""
    at = now or utcnow()
    CursorRepository(session).set(source_id, CATCH_UP_KEY, json.dumps({"at": at.isoformat()}))
    return at


def owed_since(session: Session, source_id: int) -> datetime | None:
    """When the source's owed catch-up was last asked for; None if it owes none."""
    return read_debt(CursorRepository(session).get(source_id, CATCH_UP_KEY))


def owed(session: Session) -> dict[int, datetime]:
    """Every source that owes a catch-up, and since when."""
    rows = session.execute(
        select(SyncCursor.source_id, SyncCursor.cursor).where(
            SyncCursor.resource_type == CATCH_UP_KEY
        )
    )
    out: dict[int, datetime] = {}
    for source_id, value in rows:
        at = read_debt(value)
        if at is not None:
            out[source_id] = at
    return out


def settle(session: Session, run: SyncRun) -> bool:
    """A run of the source finished ``ok``: the debt is paid if the run started after it
    was recorded (the caller commits, with the run). Returns whether a debt this run
    cannot pay remains (a gap recorded after it started): the caller starts another run
    at once, rather than leave it to the scheduler's next tick."""
    row = session.get(SyncCursor, (run.source_id, CATCH_UP_KEY))
    if row is None:
        return False
    at = read_debt(row.cursor)
    if at is not None and at > run.started_at:
        return True  # a later gap: this run may have read past what was missed
    session.delete(row)
    log.info("catch-up settled", extra={"source_id": run.source_id, "run_id": run.id})
    return False


def is_due(run: SyncRun | None, at: datetime, now: datetime, retry_after_s: float) -> bool:
    """Whether an owed catch-up (since ``at``) should start now, given the source's latest
    run, which is not running: none yet, one that started before the debt, or a failed
    one at least ``retry_after_s`` ago."""
    if run is None or run.started_at < at:
        return True
    ended = run.finished_at or run.started_at
    return (now - ended).total_seconds() >= retry_after_s
