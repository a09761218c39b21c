"""Retention: the outbox, the subscriptions' queues and the sync-run history are pruned.

Every change writes an outbox event, every subscription that matches it a queue row, and
every run of a source a ``sync_run`` row. Kept for ever they grow with every change (a
source syncing a million changes a month writes a million events, times the
subscriptions that hear them), and every read of them slows down. :func:`prune` deletes

1. each subscription's queue rows that its endpoint has **acknowledged**
   (``event_number <= delivered_through``) and whose event is older than the outbox
   retention (or already gone): the numbered prefix of its queue, walked from its lowest
   number and stopped at the first recent event. A subscription that is not listening
   (``off``, or its consumer deactivated) loses its unacknowledged rows past the
   retention too, and its acknowledgement point moves past them: switched back on, it
   sees the gap in the event numbers, as the backport means a client to;
2. the outbox events older than the retention that were **handed out** (``delivered_at``
   set) and that **no listening subscription still has to send**: below the lowest
   outbox id among their unacknowledged queue rows. A subscription whose endpoint has
   been failing for longer than the retention keeps its events, and every later one,
   until it catches up, is switched off or is deleted; :attr:`PruneReport.held_by`
   names it;
3. the finished sync runs older than the run retention, except the latest run of each
   source (``askonce sources status`` and the metrics show it);
4. the Bulk Data exports past their expiry (``export_retention_hours`` after they
   finished) with their files, and those nobody has worked on or polled for
   :data:`EXPORT_ABANDONED_AFTER` (a client that stopped polling a job whose worker died).

Nothing a listening subscription has not received is ever deleted. What goes is what
``$events`` can no longer answer: a Subscription's past events reach back as far as the
retention.

Each batch is its own transaction. The outbox batch holds the fan-out's lock
(:func:`sync.delivery.lock_fan_out`), so no fan-out hands out events between the moment
the pins are read and the delete; events are deleted by id, never by a range of ids, so
an event whose transaction commits late (a lower id, inserted after a higher one) is
never caught in a range it was not read in.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from store import unit_of_work
from store.models import (
    Consumer,
    ExportFile,
    ExportJob,
    Outbox,
    Subscription,
    SubscriptionEvent,
    SyncRun,
)
from store.types import utcnow
from sync.context import TaskContext
from sync.delivery import listening, lock_fan_out
from sync.runner import RUN_RUNNING

log = logging.getLogger(__name__)

#: Rows read and deleted per transaction.
PRUNE_BATCH = 5000
#: How long one :func:`prune` call keeps deleting before it returns (a beat tick's task).
DEFAULT_PRUNE_S = 60.0
#: An export in progress whose lease ran out this long ago is given up.
EXPORT_ABANDONED_AFTER = timedelta(days=1)
#: Export jobs deleted per transaction (each with its files, up to megabytes each).
EXPORT_BATCH = 50


@dataclass
class PruneReport:
    """What one :func:`prune` deleted (counts and subscription ids only)."""

    queue_rows: int = 0
    outbox_events: int = 0
    sync_runs: int = 0
    export_jobs: int = 0
    #: Subscriptions whose unacknowledged events keep outbox events past the retention.
    held_by: list[str] = field(default_factory=list)
    #: False when ``max_seconds`` ran out first (the next call goes on).
    complete: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cutoff(now: datetime, days: int) -> datetime | None:
    return now - timedelta(days=days) if days > 0 else None


def prune_queue(session: Session, sub: Subscription, cutoff: datetime, batch: int) -> int:
    """Delete up to ``batch`` of the queue rows of ``sub`` whose events are older than
    ``cutoff`` or gone (its lowest numbers first, stopping at the first recent event):
    acknowledged ones, or any if it is not listening (then its acknowledgement point
    moves past them). Returns the rows deleted."""
    hears = session.scalar(
        select(listening())
        .select_from(Subscription)
        .join(Consumer, Consumer.id == Subscription.consumer_id)
        .where(Subscription.id == sub.id)
    )
    through = sub.delivered_through if hears else sub.events_since_start
    rows = session.execute(
        select(SubscriptionEvent.event_number, Outbox.created_at)
        .outerjoin(Outbox, Outbox.id == SubscriptionEvent.outbox_id)
        .where(
            SubscriptionEvent.subscription_id == sub.id,
            SubscriptionEvent.event_number <= through,
        )
        .order_by(SubscriptionEvent.event_number)
        .limit(batch)
    ).all()
    last = None
    for number, created_at in rows:
        if created_at is not None and created_at >= cutoff:
            break
        last = number
    if last is None:
        return 0
    # A range is safe here: the fan-out only appends numbers above events_since_start.
    result = session.execute(
        delete(SubscriptionEvent).where(
            SubscriptionEvent.subscription_id == sub.id,
            SubscriptionEvent.event_number <= last,
        )
    )
    if last > sub.delivered_through:
        sub.delivered_through = last
    return int(getattr(result, "rowcount", 0) or 0)


def unacknowledged_pins(session: Session) -> dict[str, int]:
    """Each listening subscription with unacknowledged queue rows: the lowest outbox id
    among them (what it still has to send)."""
    pins: dict[str, int] = {}
    for sub_id, delivered_through in session.execute(
        select(Subscription.id, Subscription.delivered_through)
        .join(Consumer, Consumer.id == Subscription.consumer_id)
        .where(listening())
    ):
        lowest = session.scalar(
            select(func.min(SubscriptionEvent.outbox_id)).where(
                SubscriptionEvent.subscription_id == sub_id,
                SubscriptionEvent.event_number > delivered_through,
            )
        )
        if lowest is not None:
            pins[sub_id] = int(lowest)
    return pins


def prune_outbox(session: Session, cutoff: datetime, batch: int) -> tuple[int, list[str]]:
    """Delete up to ``batch`` outbox events older than ``cutoff``, handed out and below
    every subscription's unacknowledged events (oldest first, stopping at the first event
    that must stay). Returns the events deleted and the subscriptions that held the first
    one kept, if a pin did."""
    lock_fan_out(session)
    pins = unacknowledged_pins(session)
    pin = min(pins.values(), default=None)
    rows = session.execute(
        select(Outbox.id, Outbox.created_at, Outbox.delivered_at).order_by(Outbox.id).limit(batch)
    ).all()
    ids: list[int] = []
    held_by: list[str] = []
    for event_id, created_at, delivered_at in rows:
        if created_at >= cutoff or delivered_at is None:
            break
        if pin is not None and event_id >= pin:
            held_by = sorted(sub for sub, lowest in pins.items() if lowest <= event_id)
            break
        ids.append(event_id)
    if ids:
        session.execute(delete(Outbox).where(Outbox.id.in_(ids)))
    return len(ids), held_by


def prune_runs(session: Session, cutoff: datetime, batch: int) -> int:
    """Delete up to ``batch`` finished sync runs that started before ``cutoff``, keeping
    each source's latest run."""
    latest = select(func.max(SyncRun.id)).group_by(SyncRun.source_id)
    ids = list(
        session.scalars(
            select(SyncRun.id)
            .where(
                SyncRun.started_at < cutoff,
                SyncRun.status != RUN_RUNNING,
                SyncRun.id.not_in(latest),
            )
            .order_by(SyncRun.id)
            .limit(batch)
        )
    )
    if ids:
        session.execute(delete(SyncRun).where(SyncRun.id.in_(ids)))
    return len(ids)


def delete_export(session: Session, job_id: str) -> None:
    """Delete an export job and its files (a worker still writing it stops at its next
    file: its lease is gone with the row)."""
    session.execute(delete(ExportFile).where(ExportFile.job_id == job_id))
    session.execute(delete(ExportJob).where(ExportJob.id == job_id))


def prune_exports(session: Session, now: datetime, batch: int = EXPORT_BATCH) -> int:
    """Delete up to ``batch`` export jobs past their expiry or abandoned, with their
    files. Returns how many."""
    ids = list(
        session.scalars(
            select(ExportJob.id)
            .where(
                (ExportJob.expires_at < now)
                | (
                    ExportJob.status.in_(("accepted", "running"))
                    & (ExportJob.lease_until < now - EXPORT_ABANDONED_AFTER)
                )
            )
            .limit(batch)
        )
    )
    for job_id in ids:
        delete_export(session, job_id)
    return len(ids)


def prune(
    session_factory: sessionmaker[Session],
    *,
    outbox_days: int,
    run_days: int,
    now: datetime | None = None,
    batch: int = PRUNE_BATCH,
    max_seconds: float = DEFAULT_PRUNE_S,
) -> PruneReport:
    """Delete what is past its retention (see the module), ``batch`` rows per transaction,
    for at most ``max_seconds``. ``outbox_days`` (events and queues) or ``run_days`` (sync
    runs) of 0 keeps those for ever."""
    now = now or utcnow()
    deadline = time.monotonic() + max_seconds
    report = PruneReport()

    def in_time() -> bool:
        if time.monotonic() < deadline:
            return True
        report.complete = False
        return False

    outbox_cutoff = _cutoff(now, outbox_days)
    if outbox_cutoff is not None:
        with unit_of_work(session_factory) as session:
            subs = list(session.scalars(select(Subscription.id)))
        for sub_id in subs:
            while in_time():
                with unit_of_work(session_factory) as session:
                    sub = session.get(Subscription, sub_id)
                    deleted = 0 if sub is None else prune_queue(session, sub, outbox_cutoff, batch)
                report.queue_rows += deleted
                if deleted < batch:
                    break
        while in_time():
            with unit_of_work(session_factory) as session:
                deleted, held_by = prune_outbox(session, outbox_cutoff, batch)
            report.outbox_events += deleted
            report.held_by = held_by
            if deleted < batch:
                break
    run_cutoff = _cutoff(now, run_days)
    if run_cutoff is not None:
        while in_time():
            with unit_of_work(session_factory) as session:
                deleted = prune_runs(session, run_cutoff, batch)
            report.sync_runs += deleted
            if deleted < batch:
                break
    while in_time():
        with unit_of_work(session_factory) as session:
            deleted = prune_exports(session, now)
        report.export_jobs += deleted
        if deleted < EXPORT_BATCH:
            break
    if (
        report.queue_rows
        or report.outbox_events
        or report.sync_runs
        or report.export_jobs
        or report.held_by
    ):
        log.info(
            "pruned",
            extra={
                "queue_rows": report.queue_rows,
                "outbox_events": report.outbox_events,
                "sync_runs": report.sync_runs,
                "export_jobs": report.export_jobs,
                "held_by": report.held_by,
                "complete": report.complete,
            },
        )
    return report


def prune_with(context: TaskContext, *, max_seconds: float = DEFAULT_PRUNE_S) -> PruneReport:
    """:func:`prune` with the retention the process's task context wired."""
    return prune(
        context.session_factory,
        outbox_days=context.outbox_retention_days,
        run_days=context.run_retention_days,
        max_seconds=max_seconds,
    )
