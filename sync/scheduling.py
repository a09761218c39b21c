"""Which sources are due for a sync: the plain function behind the beat tick.

A source's ``schedule`` is either an interval (``"900"`` seconds, or ``"15m"``,
``"2h"``, ``"1d"``) or a five-field cron expression (``"*/30 * * * *"``, minute
hour day-of-month month day-of-week, read by :class:`celery.schedules.crontab`).
A source with no schedule syncs only when asked (``askonce sync NAME``).
A running run whose heartbeat is older than ``stall_after_s`` counts as crashed,
so the tick resumes it from its last committed cursor.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta

from celery.schedules import crontab
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from store.models import Source, SyncRun
from store.types import utcnow
from sync.context import TaskContext

log = logging.getLogger(__name__)

#: A running run with no committed page for this long is considered crashed and resumed.
DEFAULT_STALL_AFTER_S = 300.0
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
    """Ids of the enabled, scheduled sources that should start (or resume) a run now."""
    now = now or utcnow()
    latest = (
        select(SyncRun.source_id, func.max(SyncRun.id).label("run_id"))
        .group_by(SyncRun.source_id)
        .subquery()
    )
    rows = session.execute(
        select(Source, SyncRun)
        .outerjoin(latest, latest.c.source_id == Source.id)
        .outerjoin(SyncRun, SyncRun.id == latest.c.run_id)
        .where(Source.enabled.is_(True), Source.schedule.is_not(None))
        .order_by(Source.id)
    ).all()
    due: list[int] = []
    for source, run in rows:
        try:
            schedule = parse_schedule(source.schedule or "")
        except InvalidScheduleError:
            continue
        if run is None:
            due.append(source.id)
            continue
        if run.status == "running":
            if (now - _heartbeat(run)).total_seconds() >= stall_after_s:
                due.append(source.id)
            continue
        if isinstance(schedule, timedelta):
            if now - run.started_at >= schedule:
                due.append(source.id)
        elif schedule.is_due(run.started_at).is_due:
            due.append(source.id)
    return due


def dispatch_due(context: TaskContext, trigger: Callable[[int], None]) -> list[int]:
    """Call ``trigger(source_id)`` for every due source; returns their ids."""
    with context.session_factory() as session:
        due = due_sources(session)
    for source_id in due:
        trigger(source_id)
    if due:
        log.info("sources due", extra={"count": len(due)})
    return due
