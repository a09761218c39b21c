"""Which sources are due for a sync: the plain function behind the beat tick.

A source's ``schedule`` is either an interval (``"900"`` seconds, or ``"15m"``,
``"2h"``, ``"1d"``) or a five-field cron expression (``"*/30 * * * *"``, minute
hour day-of-month month day-of-week, read by :class:`celery.schedules.crontab`).
A source with no schedule syncs only when asked (``askonce sync NAME``), or when its
push notifications showed a gap and the catch-up it owes is not yet done
(:mod:`sync.catchup`). A running run whose heartbeat is older than ``stall_after_s``
counts as crashed, so the tick resumes it from its last committed cursor.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta

from celery.schedules import crontab
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from store.models import Source, SyncRun
from store.types import utcnow
from sync import catchup, ehr_watch, reparse, retire
from sync.context import DEFAULT_STALL_AFTER_S, TaskContext

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_INTERVAL = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
CRON_FIELDS = 5


class InvalidScheduleError(ValueError):
    """A schedule that is neither an interval nor a five-field cron expression."""


def parse_schedule(value: str) -> timedelta | crontab:
    """An interval (``timedelta``) or a ``crontab`` from a source's schedule string."""
    match = _INTERVAL.match(value)
    if match:
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
        if seconds <= 0:
            raise InvalidScheduleError("a schedule interval must be positive")
        return timedelta(seconds=seconds)
    fields = value.split()
    if len(fields) != CRON_FIELDS:
        raise InvalidScheduleError(
            "schedule must be seconds, '<n>m|h|d', or a 5-field cron expression"
        )
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month,
            day_of_week=day_of_week,
        )
    except (ValueError, TypeError) as exc:
        raise InvalidScheduleError(f"invalid cron expression: {exc}") from exc


def _heartbeat(run: SyncRun) -> datetime:
    value = (run.detail or {}).get("heartbeat")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return run.started_at


def due_sources(
    session: Session,
    *,
    now: datetime | None = None,
    stall_after_s: float = DEFAULT_STALL_AFTER_S,
) -> list[int]:
    """Ids of the enabled sources that should start (or resume) a run now: those whose
    schedule is due, and those that owe a catch-up (:func:`sync.catchup.is_due`)."""
    now = now or utcnow()
    owed = catchup.owed(session)
    latest = (
        select(SyncRun.source_id, func.max(SyncRun.id).label("run_id"))
        .group_by(SyncRun.source_id)
        .subquery()
    )
    rows = session.execute(
        select(Source, SyncRun)
        .outerjoin(latest, latest.c.source_id == Source.id)
        .outerjoin(SyncRun, SyncRun.id == latest.c.run_id)
        .where(
            Source.enabled.is_(True),
            or_(Source.schedule.is_not(None), Source.id.in_(list(owed))),
        )
        .order_by(Source.id)
    ).all()
    due: list[int] = []
    for source, run in rows:
        if run is not None and run.status == "running":
            if (now - _heartbeat(run)).total_seconds() >= stall_after_s:
                due.append(source.id)
            continue
        if source.id in owed and catchup.is_due(run, owed[source.id], now, stall_after_s):
            due.append(source.id)
            continue
        try:
            schedule = parse_schedule(source.schedule or "")
        except InvalidScheduleError:
            continue
        if run is None:
            due.append(source.id)
            continue
        if isinstance(schedule, timedelta):
            if now - run.started_at >= schedule:
                due.append(source.id)
        elif schedule.is_due(run.started_at).is_due:
            due.append(source.id)
    return due


def dispatch_due(
    context: TaskContext,
    trigger: Callable[[int], None],
    remove: Callable[[int], None] | None = None,
    reread: Callable[[int], None] | None = None,
) -> list[int]:
    """Look at the Subscriptions askonce keeps on the EHRs (:func:`sync.ehr_watch.watch`:
    one an EHR stopped owes a catch-up), then call ``trigger(source_id)`` for every due
    source, ``remove(source_id)`` for every removal that stopped half-way
    (:func:`sync.retire.stalled_removals`) and ``reread(source_id)`` for every source
    whose stored Patients are to be read again (:func:`sync.reparse.stale_sources`);
    returns the ids of the due sources."""
    try:
        ehr_watch.watch(context)
    except Exception as exc:  # the watch must not keep the sources from their syncs
        log.warning("subscription watch failed", extra={"error": type(exc).__name__})
    with context.session_factory() as session:
        due = due_sources(session, stall_after_s=context.stall_after_s)
        stalled = retire.stalled_removals(session, stall_after_s=context.stall_after_s)
        stale = [] if reread is None else reparse.stale_sources(session, context.default_region)
    for source_id in due:
        trigger(source_id)
    if due:
        log.info("sources due", extra={"count": len(due)})
    if remove is not None:
        for source_id in stalled:
            log.warning("stalled source removal resumed", extra={"source_id": source_id})
            remove(source_id)
    if reread is not None:
        for source_id in stale:
            reread(source_id)
    return due
