"""Link operations: link, unlink, merge, unmerge, recompute. Each is one transaction's work.

Every operation writes the new golden versions (through the repository), the link history
(with a snapshot where an undo needs one), the outbox events, and re-points the encounters
of the records it moves. A steward's operation also records a :class:`MatchDecision`, so
the algorithm never undoes it. Nothing here commits: the caller's unit of work does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, delete, insert, select, tuple_, update
from sqlalchemy.orm import Session

from mpi.errors import GoldenNotFound, InvalidOperation, RecordNotFound
from mpi.resolve import holds_block_locks, lock_block_keys, uses_block_locks
from mpi.review import settle_review_items
from mpi.settings import MatchSettings
from mpi.storage import (
    create_golden,
    emit,
    linked_record_ids,
    member_records,
    recomputed_status,
    write_golden,
)
from store.bulk import chunks
from store.db import write_time
from store.events import ENCOUNTER_UPDATED, outbox_row
from store.models import (
    BlockKey,
    Encounter,
    GoldenPatient,
    Link,
    LinkHistory,
    MatchDecision,
    Outbox,
    SourceRecord,
    new_uuid,
)

#: At most this many record pairs are stored for one steward "no-match" between groups.
MAX_DECISION_PAIRS = 2_500


def _golden(session: Session, golden_id: str, *, active: bool = True) -> GoldenPatient:
    golden = session.get(GoldenPatient, golden_id)
    if golden is None:
        raise GoldenNotFound(golden_id)
    if active and golden.status != "active":
        raise InvalidOperation(f"golden record {golden_id} is {golden.status}")
    return golden


def golden_block_keys(session: Session, golden_ids: Iterable[str]) -> list[str]:
    """The block keys of every record linked to ``golden_ids``."""
    # Two indexed reads (a join let the planner scan the whole key table: ~9 ms a merge
    # at 5,000 people, bench.merge).
    records = session.scalars(
        select(Link.source_record_id).where(Link.golden_id.in_(sorted(set(golden_ids))))
    ).all()
    if not records:
        return []
    return list(
        session.scalars(
            select(BlockKey.key).where(BlockKey.source_record_id.in_(records)).distinct()
        )
    )


def lock_goldens(session: Session, golden_ids: Iterable[str]) -> None:
    """Take the advisory locks of the block keys of every record of ``golden_ids``
    (PostgreSQL; SQLite has one writer), before an operation reads them.

    An ingest holds the locks of its records' keys while it decides and writes
    (:func:`mpi.resolve.lock_block_keys`), and a record it may link to one of these golden
    records shares a key with one of their records (that is how it was found), as does a
    new version of one of their records. Without this, a merge that moved the links it saw
    would let such an ingest commit a link to the golden record merged away (or emptied by
    an unlink or a deletion): a record every consumer would lose, since reads follow
    ``replaced-by`` (and a deleted golden record answers 410).

    A transaction that holds block locks already takes none here: a second set could
    deadlock (:func:`mpi.resolve.lock_block_keys`), and its first call locked what it needs
    (:func:`mpi.admin.merge_patients` before :func:`merge_golden`; an ingest page its
    deletions' golden records with its own records)."""
    if uses_block_locks(session) and not holds_block_locks(session):
        lock_block_keys(session, golden_block_keys(session, golden_ids))


def _golden_of(session: Session, record_id: int) -> str | None:
    return session.scalar(select(Link.golden_id).where(Link.source_record_id == record_id))


def _link_of(session: Session, record_id: int) -> Link:
    link = session.scalar(select(Link).where(Link.source_record_id == record_id))
    if link is None:
        raise RecordNotFound(record_id)
    return link


def repoint_encounters(session: Session, record_ids: Sequence[int], golden_id: str) -> None:
    """Encounters follow their patient: those of ``record_ids`` now belong to ``golden_id``.
    Each one that moves is changed (its ``lastUpdated``: a new subject) and gets an
    ``encounter.updated`` event."""
    if not record_ids:
        return
    pairs = session.execute(
        select(SourceRecord.source_id, SourceRecord.resource_id).where(
            SourceRecord.id.in_(list(record_ids))
        )
    ).all()
    if not pairs:
        return
    now = write_time(session)
    moved = session.execute(
        update(Encounter)
        .where(
            tuple_(Encounter.source_id, Encounter.patient_resource_id).in_(
                [(s, r) for s, r in pairs]
            ),
            Encounter.golden_id.is_distinct_from(golden_id),
        )
        .values(golden_id=golden_id, last_updated=now)
        .returning(Encounter.id, Encounter.source_id, Encounter.source_record_id)
    ).all()
    if not moved:
        return
    resource_ids: dict[int, str] = {}
    for chunk in chunks([record for _, _, record in moved]):
        rows = session.execute(
            select(SourceRecord.id, SourceRecord.resource_id).where(SourceRecord.id.in_(chunk))
        )
        resource_ids.update((record, resource_id) for record, resource_id in rows)
    session.execute(
        insert(Outbox),
        [
            outbox_row(
                ENCOUNTER_UPDATED,
                enc_id,
                now=now,
                golden_id=golden_id,
                source_id=source_id,
                resource_id=resource_ids[record],
            )
            for enc_id, source_id, record in sorted(moved)
        ],
    )


def store_decision(
    session: Session, a: int, b: int, decision: str, actor: str, note: str | None = None
) -> None:
    """Record a steward decision on a pair of source records (replacing an older one)."""
    low, high = min(a, b), max(a, b)
    session.execute(
        delete(MatchDecision).where(
            and_(MatchDecision.record_a_id == low, MatchDecision.record_b_id == high)
        )
    )
    session.add(
        MatchDecision(record_a_id=low, record_b_id=high, decision=decision, actor=actor, note=note)
    )


def _history(session: Session, action: str, **fields: Any) -> None:
    session.add(LinkHistory(action=action, **fields))


def recompute_golden(
    session: Session, golden_id: str, *, settings: MatchSettings | None = None
) -> GoldenPatient:
    """Rebuild a golden record from its linked active source records.

    With no active record left (all deleted at their source) it becomes ``deleted``.
    """
    settings = settings or MatchSettings()
    golden = _golden(session, golden_id, active=False)
    members = member_records(session, linked_record_ids(session, golden_id))
    status = recomputed_status(golden.status, bool(members))
    golden = write_golden(session, settings, golden_id, status=status)
    emit(session, "patient.updated", golden_id, version=golden.version, status=golden.status)
    if golden.status == "deleted":
        settle_review_items(session, golden_ids=[golden_id])
    return golden


def link_record(
    session: Session,
    record_id: int,
    golden_id: str,
    *,
    actor: str,
    settings: MatchSettings | None = None,
) -> None:
    """A steward links a source record to a golden record (method MANUAL). A record
    already there is confirmed: its link becomes MANUAL (never checked again) and the
    link history says who confirmed it."""
    settings = settings or MatchSettings()
    lock_goldens(session, [golden_id, *filter(None, [_golden_of(session, record_id)])])
    target = _golden(session, golden_id)
    link = _link_of(session, record_id)
    old = link.golden_id
    if old == target.id:
        if link.method != "MANUAL":
            link.method, link.grade, link.flagged = "MANUAL", "certain", False
            link.explanation = {"steward": "confirm", "actor": actor, "before": link.explanation}
            _history(
                session,
                "link",
                source_record_id=record_id,
                golden_id=golden_id,
                method="MANUAL",
                actor=actor,
                grade="certain",
                explanation={"steward": "confirm"},
            )
        return
    for other in linked_record_ids(session, golden_id)[:1]:
        store_decision(session, record_id, other, "match", actor)
    link.golden_id, link.method, link.grade, link.flagged = golden_id, "MANUAL", "certain", False
    link.explanation = {"steward": "link", "actor": actor, "previous_golden_id": old}
    session.flush()
    _history(
        session,
        "link",
        source_record_id=record_id,
        golden_id=golden_id,
        other_golden_id=old,
        method="MANUAL",
        actor=actor,
        grade="certain",
    )
    repoint_encounters(session, [record_id], golden_id)
    if linked_record_ids(session, old):
        recompute_golden(session, old, settings=settings)
    else:  # the old golden record has no record left: it is replaced by the target
        write_golden(session, settings, old, status="merged", merged_into=golden_id)
        emit(session, "patient.merged", golden_id, merged=old)
        settle_review_items(session, golden_ids=[old])
    updated = write_golden(session, settings, golden_id)
    emit(session, "patient.updated", golden_id, version=updated.version)


def unlink_record(
    session: Session, record_id: int, *, actor: str, settings: MatchSettings | None = None
) -> str:
    """A steward takes a record out of its golden record; it gets a golden record of its own.

    The record is never linked back automatically to the records it left (a "no-match"
    decision is stored for each). Returns the new golden id.
    """
    settings = settings or MatchSettings()
    lock_goldens(session, filter(None, [_golden_of(session, record_id)]))
    link = _link_of(session, record_id)
    old = link.golden_id
    others = [r for r in linked_record_ids(session, old) if r != record_id]
    if not others:
        raise InvalidOperation(f"source record {record_id} is the only record of {old}")
    for other in others[:MAX_DECISION_PAIRS]:
        store_decision(session, record_id, other, "no-match", actor)
    new_id = new_uuid()
    create_golden(session, settings, new_id, member_records(session, [record_id]))
    link.golden_id, link.method, link.grade, link.flagged = new_id, "MANUAL", "certain", False
    link.explanation = {"steward": "unlink", "actor": actor, "previous_golden_id": old}
    session.flush()
    _history(
        session,
        "unlink",
        source_record_id=record_id,
        golden_id=new_id,
        other_golden_id=old,
        method="MANUAL",
        actor=actor,
    )
    repoint_encounters(session, [record_id], new_id)
    recompute_golden(session, old, settings=settings)
    emit(session, "patient.created", new_id, source_record_id=record_id)
    return new_id


def merge_golden(
    session: Session,
    loser_id: str,
    survivor_id: str,
    *,
    actor: str,
    settings: MatchSettings | None = None,
    method: str = "MANUAL",
    explanation: dict[str, Any] | None = None,
) -> GoldenPatient:
    """Merge ``loser_id`` into ``survivor_id``: links move, the loser is ``replaced-by``.
    ``explanation`` is kept with the merge in the link history.

    See https://hl7.org/fhir/R4/patient.html#links for ``replaced-by``/``replaces``.
    """
    settings = settings or MatchSettings()
    if loser_id == survivor_id:
        raise InvalidOperation("a golden record cannot be merged into itself")
    lock_goldens(session, (loser_id, survivor_id))
    for golden_id in sorted((loser_id, survivor_id)):  # lock in a fixed order
        _golden(session, golden_id)
    records = linked_record_ids(session, loser_id)
    session.execute(update(Link).where(Link.golden_id == loser_id).values(golden_id=survivor_id))
    session.flush()
    _history(
        session,
        "merge",
        golden_id=loser_id,
        other_golden_id=survivor_id,
        method=method,
        actor=actor,
        explanation=explanation or {},
        snapshot={"records": records},
    )
    repoint_encounters(session, records, survivor_id)
    write_golden(session, settings, loser_id, status="merged", merged_into=survivor_id)
    survivor = write_golden(session, settings, survivor_id)
    emit(session, "patient.merged", survivor_id, merged=loser_id, version=survivor.version)
    settle_review_items(session, golden_ids=[loser_id])
    return survivor


def unmerge_golden(
    session: Session, loser_id: str, *, actor: str, settings: MatchSettings | None = None
) -> str:
    """Undo the last merge of ``loser_id``: its records, as they were, get it back.

    A "no-match" decision between the two groups keeps them from being merged again
    automatically. Returns the survivor's id.
    """
    settings = settings or MatchSettings()
    loser = _golden(session, loser_id, active=False)
    if loser.status != "merged" or loser.merged_into is None:
        raise InvalidOperation(f"golden record {loser_id} is not merged")
    survivor_id = loser.merged_into
    lock_goldens(session, (loser_id, survivor_id))
    entry = session.scalar(
        select(LinkHistory)
        .where(LinkHistory.action == "merge", LinkHistory.golden_id == loser_id)
        .order_by(LinkHistory.id.desc())
        .limit(1)
    )
    if entry is None or not entry.snapshot:
        raise InvalidOperation(f"no merge of {loser_id} in the link history")
    still_there = set(linked_record_ids(session, survivor_id))
    records = [r for r in entry.snapshot.get("records", []) if r in still_there]
    if not records or len(records) == len(still_there):
        raise InvalidOperation(f"the records of {loser_id} are no longer in {survivor_id}")
    session.execute(
        update(Link).where(Link.source_record_id.in_(records)).values(golden_id=loser_id)
    )
    remaining = sorted(still_there - set(records))
    pairs = [(a, b) for a in records for b in remaining][:MAX_DECISION_PAIRS]
    for a, b in pairs:
        store_decision(session, a, b, "no-match", actor, note="unmerge")
    loser.merged_into = None
    session.flush()
    _history(
        session,
        "unmerge",
        golden_id=loser_id,
        other_golden_id=survivor_id,
        method="MANUAL",
        actor=actor,
        snapshot={"records": records},
    )
    repoint_encounters(session, records, loser_id)
    restored = write_golden(session, settings, loser_id, status="active")
    survivor = write_golden(session, settings, survivor_id)
    emit(session, "patient.unmerged", loser_id, other=survivor_id, version=restored.version)
    emit(session, "patient.unmerged", survivor_id, other=loser_id, version=survivor.version)
    return survivor_id
