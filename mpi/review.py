"""Keeping the review queue true to the golden records as they change.

A review item asks a steward one question: is this source record the person of that
golden record (``possible-match``, ``vetoed``), or are these two golden records one
person (``duplicate-golden``)? The records and golden records it names move on after it
was queued: the MPI merges a golden record into another when a new record bridges them,
a steward links or merges, a source deletes the record or a golden record loses its
last record and becomes ``deleted``. :func:`settle_review_items` brings the open items
that name what changed up to date, so that the queue holds only questions that still
mean something and every one of them can be decided:

- a golden record merged away stands for its survivor (``merged_into``, followed to the
  end): the item now names the survivor, and the evidence keeps what it named before;
- the item is *withdrawn* (resolved, ``resolution = "withdrawn"``, by ``mpi``, the
  reason in its evidence) when its question has gone: its source record was deleted,
  a golden record it asks about was deleted, or the two golden records it asks about
  are now one. A record whose new version is someone else's (it left its golden
  record, :func:`mpi.resolve._detach`) has its items withdrawn too
  (:func:`withdraw_review_items`): they were asked of the person it was.

A record that a merge brought into the golden record it was queued against keeps its
item: the merge was the MPI's answer, and a steward's "no-match" still takes the record
out again (:func:`mpi.admin.record_decision`).

The writers call it for what they changed: every merge (automatic in
:mod:`mpi.resolve`, a steward's in :mod:`mpi.operations`), a golden record recomputed to
``deleted`` (:func:`mpi.recompute_goldens`, :func:`mpi.recompute_golden`) and a source's
Patient deletions (:func:`sync.pipeline.apply_deletions`). A decision calls it for its
item first, so that an item left behind by anything else is
settled before it is decided, never decided against a golden record that is gone.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mpi.decision import DUPLICATE_GOLDEN
from store.bulk import chunks
from store.models import GoldenPatient, ReviewItem, SourceRecord
from store.types import utcnow

#: ``review_item.resolution`` of an item whose question has gone.
WITHDRAWN = "withdrawn"
#: Who resolves a withdrawn item (the MPI's actor in the link history too).
SYSTEM_ACTOR = "mpi"
#: ``source_record.status`` of a record its source deleted.
STATUS_DELETED = "deleted"
#: Ids per ``IN`` list.
_CHUNK = 500
#: Merges followed at most from one golden record (a chain this long means a cycle).
_MAX_CHAIN = 64


def settle_review_items(
    session: Session,
    *,
    golden_ids: Collection[str] = (),
    record_ids: Collection[int] = (),
    item_ids: Collection[int] = (),
) -> int:
    """Bring the open review items naming any of ``golden_ids`` (as either golden record),
    ``record_ids`` or ``item_ids`` up to date (see the module docstring).

    Returns how many were withdrawn. Nothing here commits.
    """
    items = _open_items(session, golden_ids, record_ids, item_ids)
    if not items:
        return 0
    goldens = _follow_merges(
        session, {g for item in items for g in (item.golden_id, item.other_golden_id) if g}
    )
    records = sorted({item.source_record_id for item in items if item.source_record_id})
    status_of: dict[int, str] = {}
    for chunk in chunks(records, _CHUNK):
        status_of.update(
            session.execute(
                select(SourceRecord.id, SourceRecord.status).where(SourceRecord.id.in_(chunk))
            ).all()
        )
    withdrawn = 0
    now = utcnow()
    for item in items:
        reason = _settle(item, goldens, status_of)
        if reason is not None:
            _withdraw(item, reason, now)
            withdrawn += 1
    session.flush()
    return withdrawn


def withdraw_review_items(session: Session, reasons: Mapping[int, str]) -> int:
    """Withdraw every open review item of the source records in ``reasons``, each with
    its record's reason: items asked of a version of the record that is gone (a record
    that changed into another person, :func:`mpi.resolve._detach`). Returns how many.
    Nothing here commits."""
    items = _open_items(session, (), list(reasons), ())
    now = utcnow()
    for item in items:
        assert item.source_record_id is not None  # found by it
        _withdraw(item, reasons[item.source_record_id], now)
    session.flush()
    return len(items)


def _withdraw(item: ReviewItem, reason: str, now: datetime) -> None:
    item.status, item.resolution, item.resolved_by = "resolved", WITHDRAWN, SYSTEM_ACTOR
    item.resolved_at = now
    item.evidence = {**(item.evidence or {}), WITHDRAWN: reason}


def _open_items(
    session: Session,
    golden_ids: Collection[str],
    record_ids: Collection[int],
    item_ids: Collection[int],
) -> list[ReviewItem]:
    found: dict[int, ReviewItem] = {}
    open_ = ReviewItem.status == "open"
    for golden_chunk in chunks(sorted(set(golden_ids)), _CHUNK):
        named = or_(
            ReviewItem.golden_id.in_(golden_chunk), ReviewItem.other_golden_id.in_(golden_chunk)
        )
        found.update(
            (item.id, item) for item in session.scalars(select(ReviewItem).where(open_, named))
        )
    for column, values in (
        (ReviewItem.source_record_id, record_ids),
        (ReviewItem.id, item_ids),
    ):
        for chunk in chunks(sorted(set(values)), _CHUNK):
            found.update(
                (item.id, item)
                for item in session.scalars(select(ReviewItem).where(open_, column.in_(chunk)))
            )
    return [found[key] for key in sorted(found)]


def _follow_merges(session: Session, golden_ids: set[str]) -> dict[str, tuple[str, str | None]]:
    """Each golden record -> (its status, or ``"missing"``; the golden record it stands
    for now: itself, its survivor at the end of its merges, or None when missing)."""
    rows: dict[str, tuple[str, str | None]] = {}
    wanted = set(golden_ids)
    for _ in range(_MAX_CHAIN):
        wanted -= rows.keys()
        if not wanted:
            break
        for chunk in chunks(sorted(wanted), _CHUNK):
            rows.update(
                (golden_id, (status, merged_into))
                for golden_id, status, merged_into in session.execute(
                    select(GoldenPatient.id, GoldenPatient.status, GoldenPatient.merged_into).where(
                        GoldenPatient.id.in_(chunk)
                    )
                ).all()
            )
        for golden_id in wanted - rows.keys():
            rows[golden_id] = ("missing", None)
        wanted = {
            merged_into
            for status, merged_into in rows.values()
            if status == "merged" and merged_into is not None
        }
    current: dict[str, tuple[str, str | None]] = {}
    for golden_id in golden_ids:
        now: str | None = golden_id
        for _ in range(_MAX_CHAIN):
            status, merged_into = rows.get(now or "", ("missing", None))
            if status != "merged" or merged_into is None or merged_into not in rows:
                break
            now = merged_into
        status = rows.get(now or "", ("missing", None))[0]
        current[golden_id] = (status, now if status != "missing" else None)
    return current


def _settle(
    item: ReviewItem, goldens: dict[str, tuple[str, str | None]], status_of: dict[int, str]
) -> str | None:
    """The reason ``item`` is withdrawn, or None once it names the golden records that
    stand for the ones it named (changed in place).

    A ``possible-match``'s ``other_golden_id`` only says where its record was when it was
    queued: followed through merges, never a reason to withdraw it."""
    pair = item.kind == DUPLICATE_GOLDEN
    moved: list[dict[str, str]] = []
    for attribute in ("golden_id", "other_golden_id"):
        named = getattr(item, attribute)
        if named is None:
            continue
        status, now = goldens[named]
        if now is None or status == "deleted":
            if pair or attribute == "golden_id":
                gone = now or named
                return f"golden record {gone} was deleted: no active source record is left in it"
            continue
        if now != named:
            setattr(item, attribute, now)
            moved.append({"field": attribute, "from": named, "to": now})
    if moved:
        item.evidence = {**(item.evidence or {}), "merged": [*_moved(item), *moved]}
    if pair:
        if item.golden_id == item.other_golden_id:
            return f"the two golden records are now one, {item.golden_id}"
        return None
    record = item.source_record_id
    if record is None or item.golden_id is None:
        return None
    if status_of.get(record, STATUS_DELETED) == STATUS_DELETED:
        return f"source record {record} was deleted at its source"
    return None


def _moved(item: ReviewItem) -> list[dict[str, str]]:
    earlier = (item.evidence or {}).get("merged")
    return list(earlier) if isinstance(earlier, list) else []
