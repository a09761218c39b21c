"""Removing a source: its records leave the golden records, then the source is erased.

A hospital retires an EHR, or a source was registered by mistake. Deleting the source
row alone would take its records with it (the ``source`` table's delete trigger) but
leave every golden record it fed as it was, with values, identifiers and encounters of
a system that is gone, and tell no consumer. :func:`remove_source` does it in the order
that keeps the golden records right at every commit:

1. the source is disabled, its running run stopped and ``source.removing_since`` set
   (:func:`begin_removal`): no sync, push or MLLP message of it is taken from then on,
   and nothing enables or changes it again;
2. its live records are deleted exactly as a source's own deletion would do it
   (:func:`sync.pipeline.apply_deletions`): Encounters first, each leaving with an
   ``encounter.deleted`` event, then Patients, whose golden records are rebuilt from
   what the other sources hold (``patient.updated``; a golden record fed by this source
   alone becomes ``deleted``), in transactions of :data:`REMOVE_BATCH` under the
   source's writer lock;
3. its source records are erased (with their links, review items, block keys and
   encounters, by the record's delete trigger), then the source row, its cursors and
   its runs.

Every step commits as it goes and skips what an earlier attempt did, so an interrupted
removal is finished by running it again. The golden records' versions, the link history
and the outbox keep what happened; nothing of the removed source is read again.

Each of those commits also records the removal's heartbeat (a ``sync_cursor`` state row,
:data:`REMOVAL_STATE_KEY`). A removal whose heartbeat is older than the scheduler's
``stall_after_s`` has stopped: its process died, the database failed under an embedded
server that ran it after the answer, or a worker gave up its retries.
:func:`stalled_removals` finds them, and the scheduler's tick finishes them
(:func:`sync.scheduling.dispatch_due`), as it resumes a crashed sync.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from connectors import Source, build_source
from store import CursorRepository
from store.models import Link, SourceRecord, SyncCursor
from store.models import Source as SourceRow
from store.types import as_utc, utcnow
from sync import subscriptions
from sync.pipeline import MAX_PATIENTS_PER_TRANSACTION, UnknownSourceError, apply_deletions
from sync.records import STATUS_DELETED
from sync.runner import lock_source
from sync.sources import stop_running

log = logging.getLogger(__name__)

#: Records deleted from the golden records per transaction.
REMOVE_BATCH = MAX_PATIENTS_PER_TRANSACTION
#: Deleted source records erased per statement (their delete triggers run per row).
ERASE_BATCH = 2_000
#: ``sync_cursor.resource_type`` of a removal's heartbeat (a state row: see
#: :meth:`store.CursorRepository.clear`).
REMOVAL_STATE_KEY = "$removal"


@dataclass
class RemovalResult:
    """What :func:`remove_source` did."""

    source_id: int
    #: Live records deleted from the golden records, by resource type.
    deleted: dict[str, int] = field(default_factory=dict)
    #: Source records erased (every record of the source, deleted ones included).
    erased: int = 0
    #: The source row is gone: the removal is complete.
    removed: bool = False
    #: Subscriptions askonce had created on the source's EHR, deleted there.
    unsubscribed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RemovalPlan:
    """What removing a source will touch (for a confirmation prompt)."""

    #: Live records by resource type.
    records: dict[str, int]
    #: Golden records an active Patient record of the source is linked to.
    golden_records: int


def removal_plan(session: Session, source_id: int) -> RemovalPlan:
    live = SourceRecord.status != STATUS_DELETED
    records = dict(
        session.execute(
            select(SourceRecord.resource_type, func.count())
            .where(SourceRecord.source_id == source_id, live)
            .group_by(SourceRecord.resource_type)
        ).all()
    )
    goldens = session.scalar(
        select(func.count(func.distinct(Link.golden_id)))
        .join(SourceRecord, SourceRecord.id == Link.source_record_id)
        .where(SourceRecord.source_id == source_id, live)
    )
    return RemovalPlan(records, goldens or 0)


def _type_order(resource_type: str) -> tuple[int, str]:
    """Encounters before Patients: an Encounter leaves while its golden record is still
    the one its event names; Patients last."""
    return ({"Encounter": 0, "Patient": 2}.get(resource_type, 1), resource_type)


def begin_removal(session: Session, source_id: int) -> SourceRow:
    """Step 1, under the source's writer lock (no commit): the source is disabled, its
    running run stopped and ``removing_since`` set (kept from an earlier attempt), after
    which :func:`sync.update_source` refuses to change it. Raises
    :class:`~sync.pipeline.UnknownSourceError` for an unknown source."""
    lock_source(session, source_id)
    source = session.get(SourceRow, source_id)
    if source is None:
        raise UnknownSourceError(f"source {source_id} is not registered")
    source.enabled = False
    if source.removing_since is None:
        source.removing_since = utcnow()
    stop_running(session, source_id, "the source is being removed")
    beat(session, source_id)
    return source


def beat(session: Session, source_id: int) -> None:
    """Record that the removal is alive, in the transaction of the step it took."""
    CursorRepository(session).set(
        source_id, REMOVAL_STATE_KEY, json.dumps({"heartbeat": utcnow().isoformat()})
    )


def stalled_removals(
    session: Session, *, stall_after_s: float, now: datetime | None = None
) -> list[int]:
    """Ids of the sources being removed whose removal took no step for ``stall_after_s``
    (its last heartbeat, else when it began)."""
    now = now or utcnow()
    rows = session.execute(
        select(SourceRow.id, SourceRow.removing_since, SyncCursor.cursor)
        .outerjoin(
            SyncCursor,
            and_(
                SyncCursor.source_id == SourceRow.id,
                SyncCursor.resource_type == REMOVAL_STATE_KEY,
            ),
        )
        .where(SourceRow.removing_since.is_not(None))
        .order_by(SourceRow.id)
    ).all()
    stalled = []
    for source_id, since, state in rows:
        last = _heartbeat(state) or as_utc(since)
        if last is not None and (now - last).total_seconds() >= stall_after_s:
            stalled.append(source_id)
    return stalled


def _heartbeat(state: str | None) -> datetime | None:
    try:
        stamp = json.loads(state or "{}").get("heartbeat")
        return as_utc(datetime.fromisoformat(stamp)) if isinstance(stamp, str) else None
    except (ValueError, AttributeError):
        return None


def remove_source(
    session_factory: sessionmaker[Session],
    source_id: int,
    *,
    batch: int = REMOVE_BATCH,
    on_batch: Callable[[RemovalResult], None] | None = None,
    source_factory: Callable[..., Source] = build_source,
) -> RemovalResult:
    """Take the source's records out of the golden records, then erase the source (see the
    module docstring); first, the Subscriptions askonce created on its EHR are deleted
    there (:func:`sync.subscriptions.release`). Raises
    :class:`~sync.pipeline.UnknownSourceError` for an unknown source."""
    result = RemovalResult(source_id)
    with session_factory() as session:
        begin_removal(session, source_id)
        types = session.scalars(
            select(SourceRecord.resource_type)
            .where(SourceRecord.source_id == source_id, SourceRecord.status != STATUS_DELETED)
            .group_by(SourceRecord.resource_type)
        ).all()
        session.commit()
    log.info("source removal started", extra={"source_id": source_id})
    result.unsubscribed = subscriptions.release(
        session_factory, source_id, source_factory=source_factory
    )
    for resource_type in sorted(types, key=_type_order):
        while True:
            with session_factory() as session:
                lock_source(session, source_id)
                ids = session.scalars(
                    select(SourceRecord.resource_id)
                    .where(
                        SourceRecord.source_id == source_id,
                        SourceRecord.resource_type == resource_type,
                        SourceRecord.status != STATUS_DELETED,
                    )
                    .order_by(SourceRecord.id)
                    .limit(batch)
                ).all()
                if not ids:
                    break
                done = apply_deletions(session, source_id, resource_type, ids)
                beat(session, source_id)
                session.commit()
            result.deleted[resource_type] = result.deleted.get(resource_type, 0) + done
            if on_batch is not None:
                on_batch(result)
    while True:
        with session_factory() as session:
            lock_source(session, source_id)
            record_ids = session.scalars(
                select(SourceRecord.id)
                .where(SourceRecord.source_id == source_id)
                .order_by(SourceRecord.id)
                .limit(ERASE_BATCH)
            ).all()
            if not record_ids:
                session.execute(delete(SourceRow).where(SourceRow.id == source_id))
                session.commit()
                break
            session.execute(delete(SourceRecord).where(SourceRecord.id.in_(record_ids)))
            beat(session, source_id)
            session.commit()
        result.erased += len(record_ids)
        if on_batch is not None:
            on_batch(result)
    result.removed = True
    log.info(
        "source removed",
        extra={"source_id": source_id, "count": sum(result.deleted.values())},
    )
    return result
