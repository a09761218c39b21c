"""Real-time resolution: each incoming source Patient joins (or founds) a golden record.

For every record: file its block keys, fetch the candidates that share one (from the
indexed ``block_key`` table, oversized keys skipped and counted), score them in memory
with the active model, decide (:mod:`mpi.decision`) and write everything the decision
implies in the caller's session: link, link history, golden record versions, field
provenance, review items, and the ``patient.created``/``.updated``/``.merged`` outbox
events. Nothing commits here.

On PostgreSQL the transaction first takes ``pg_advisory_xact_lock`` on every block key of
the batch, sorted (https://www.postgresql.org/docs/current/functions-admin.html
#FUNCTIONS-ADVISORY-LOCKS): two workers ingesting the same person at the same moment
serialize on a shared key, and the second one sees the first one's golden record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, or_, select, text
from sqlalchemy.orm import Session

from fhir_mapping import SourcePatient
from mpi.blocking import block_keys, lock_ids
from mpi.decision import Decision, Member, decide, score_candidates
from mpi.features import MatchFeatures, extract_features
from mpi.model import MatchModel
from mpi.operations import merge_golden, repoint_encounters_of
from mpi.settings import MatchSettings
from mpi.storage import (
    cached_features,
    create_golden,
    emit,
    features_of,
    load_active_model,
    member_records,
    write_golden,
)
from store.models import (
    BlockKey,
    GoldenPatient,
    Link,
    LinkHistory,
    MatchDecision,
    ReviewItem,
    SourceRecord,
    new_uuid,
)

log = logging.getLogger(__name__)

#: Members of one candidate golden record loaded for scoring and guards.
MAX_MEMBERS_PER_GOLDEN = 50


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where one source record ended up."""

    source_record_id: int
    golden_id: str
    grade: str
    score: float | None
    created: bool
    review_item_id: int | None = None


def lock_block_keys(session: Session, keys: Sequence[str]) -> None:
    """Take transaction-scoped advisory locks on ``keys`` (PostgreSQL; SQLite has one writer)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for lock_id in lock_ids(keys):
        session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id})


def _features_for(
    session: Session, hashes: Sequence[tuple[int, str | None]]
) -> dict[int, MatchFeatures]:
    """Features of records given as (id, content hash): from the cache, else one query."""
    out: dict[int, MatchFeatures] = {}
    missing: list[int] = []
    for record_id, content_hash in hashes:
        cached = cached_features(record_id, content_hash)
        if cached is not None:
            out[record_id] = cached
        else:
            missing.append(record_id)
    if missing:
        rows = session.execute(
            select(SourceRecord.id, SourceRecord.content_hash, SourceRecord.normalized).where(
                SourceRecord.id.in_(missing)
            )
        ).all()
        for record_id, content_hash, normalized in rows:
            out[record_id] = features_of(record_id, content_hash, normalized or {})
    return out


def candidate_members(
    session: Session, settings: MatchSettings, keys: Sequence[str], exclude: int | None
) -> tuple[list[Member], int]:
    """Linked records sharing a usable block key (and their golden records' other members).

    Returns the members and how many keys were skipped for being oversized.
    """
    if not keys:
        return [], 0
    sizes = session.execute(
        select(BlockKey.key, func.count())
        .where(BlockKey.key.in_(list(keys)))
        .group_by(BlockKey.key)
    ).all()
    usable = [key for key, size in sizes if size <= settings.max_block_size]
    skipped = len(sizes) - len(usable)
    if not usable:
        return [], skipped
    # The records sharing the most keys first: a true match shares several.
    top = (
        select(BlockKey.source_record_id)
        .where(BlockKey.key.in_(usable))
        .group_by(BlockKey.source_record_id)
        .order_by(func.count().desc(), BlockKey.source_record_id)
        .limit(settings.max_candidates)
        .subquery()
    )
    goldens = (
        select(Link.golden_id)
        .join(GoldenPatient, GoldenPatient.id == Link.golden_id)
        .where(Link.source_record_id.in_(select(top.c.source_record_id)))
        .where(GoldenPatient.status == "active")
        .distinct()
        .subquery()
    )
    links = session.execute(
        select(Link.source_record_id, Link.golden_id, SourceRecord.content_hash)
        .join(SourceRecord, SourceRecord.id == Link.source_record_id)
        .where(Link.golden_id.in_(select(goldens.c.golden_id)))
        .where(SourceRecord.status == "active")
        .order_by(Link.golden_id, Link.id)
    ).all()
    if not links:
        return [], skipped
    per_golden: dict[str, list[tuple[int, str | None]]] = {}
    for record_id, golden_id, content_hash in links:
        if record_id != exclude:
            per_golden.setdefault(golden_id, []).append((record_id, content_hash))
    chosen = [(r, g) for g, rs in per_golden.items() for r in rs[:MAX_MEMBERS_PER_GOLDEN]]
    features = _features_for(session, [r for r, _ in chosen])
    return [Member(r, g, features[r]) for (r, _), g in chosen if r in features], skipped


def steward_decisions(session: Session, record_id: int) -> tuple[str | None, set[str]]:
    """(golden a steward matched this record to, goldens a steward said it is not)."""
    rows = session.execute(
        select(MatchDecision.record_a_id, MatchDecision.record_b_id, MatchDecision.decision)
        .where(or_(MatchDecision.record_a_id == record_id, MatchDecision.record_b_id == record_id))
        .order_by(MatchDecision.id)
    ).all()
    if not rows:
        return None, set()
    others = {(b if a == record_id else a): decision for a, b, decision in rows}
    golden_of = dict(
        session.execute(
            select(Link.source_record_id, Link.golden_id).where(
                Link.source_record_id.in_(list(others))
            )
        ).all()
    )
    manual: str | None = None
    blocked: set[str] = set()
    for other, decision in others.items():
        golden = golden_of.get(other)
        if golden is None:
            continue
        if decision == "match":
            manual = golden
        else:
            blocked.add(golden)
    return manual, blocked


def _groups_declined(session: Session, a: str, b: str) -> bool:
    """True when a steward said some record of ``a`` is not some record of ``b``."""
    records_a = select(Link.source_record_id).where(Link.golden_id == a)
    records_b = select(Link.source_record_id).where(Link.golden_id == b)
    found = session.scalar(
        select(MatchDecision.id)
        .where(
            MatchDecision.decision == "no-match",
            or_(
                MatchDecision.record_a_id.in_(records_a) & MatchDecision.record_b_id.in_(records_b),
                MatchDecision.record_a_id.in_(records_b) & MatchDecision.record_b_id.in_(records_a),
            ),
        )
        .limit(1)
    )
    return found is not None


def _write_keys(
    session: Session, record_id: int, keys: Sequence[str], *, replace: bool = True
) -> None:
    """File the block keys of a record (``replace``: drop the keys of its older version;
    a record that was never linked has none, keys and links are written together)."""
    if replace:
        session.execute(delete(BlockKey).where(BlockKey.source_record_id == record_id))
    if keys:
        session.execute(insert(BlockKey), [{"key": k, "source_record_id": record_id} for k in keys])


def _apply(
    session: Session,
    settings: MatchSettings,
    row: SourceRecord,
    patient: SourcePatient,
    decision: Decision,
) -> Resolution:
    created = decision.golden_id is None
    golden_id = decision.golden_id or new_uuid()
    explanation = dict(decision.explanation)
    if created:
        members = member_records(session, [row.id], known={row.id: patient})
        create_golden(session, settings, golden_id, members)
        explanation.setdefault("reason", "no-candidate-linked")
    grade = "certain" if created else decision.grade
    link = {
        "source_record_id": row.id,
        "golden_id": golden_id,
        "grade": grade,
        "score": decision.score,
        "method": decision.method,
        "explanation": explanation,
    }
    session.execute(insert(Link).values(flagged=decision.flagged, **link))
    session.execute(
        insert(LinkHistory).values(action="create" if created else "link", actor="mpi", **link)
    )
    repoint_encounters_of(session, row.source_id, row.resource_id, golden_id)
    for loser in decision.merge:
        if _groups_declined(session, loser, golden_id):
            continue
        merge_golden(session, loser, golden_id, actor="mpi", settings=settings, method="AUTO")
    if created:
        emit(session, "patient.created", golden_id, source_record_id=row.id)
    else:
        golden = write_golden(session, settings, golden_id)
        emit(session, "patient.updated", golden_id, version=golden.version, source_record_id=row.id)
    review_id: int | None = None
    for spec in decision.reviews:
        item = ReviewItem(
            kind=spec.kind,
            source_record_id=row.id,
            golden_id=spec.golden_id,
            other_golden_id=spec.other_golden_id or (golden_id if created else None),
            grade=spec.grade,
            score=spec.score,
            reason=spec.reason,
            evidence=spec.evidence,
        )
        session.add(item)
        session.flush()
        review_id = review_id or item.id
    return Resolution(row.id, golden_id, grade, decision.score, created, review_id)


def _resolve_one(
    session: Session,
    settings: MatchSettings,
    model: MatchModel,
    row: SourceRecord,
    patient: SourcePatient,
    features: MatchFeatures,
    keys: list[str],
) -> Resolution:
    existing = session.scalar(select(Link).where(Link.source_record_id == row.id))
    if existing is not None:  # a new version of a record we know: refresh its golden record
        _write_keys(session, row.id, keys)
        golden = write_golden(session, settings, existing.golden_id)
        emit(
            session,
            "patient.updated",
            existing.golden_id,
            version=golden.version,
            source_record_id=row.id,
        )
        return Resolution(row.id, existing.golden_id, existing.grade, existing.score, False)
    members, skipped = candidate_members(session, settings, keys, row.id)
    manual, blocked = steward_decisions(session, row.id)
    candidates = score_candidates(model, settings, features, members)
    decision = decide(candidates, settings, members=members, manual_match=manual, no_match=blocked)
    if skipped:
        decision.explanation["skipped_block_keys"] = skipped
    _write_keys(session, row.id, keys, replace=False)
    resolution = _apply(session, settings, row, patient, decision)
    log.debug(
        "patient resolved",
        extra={
            "record_id": row.id,
            "golden_id": resolution.golden_id,
            "grade": resolution.grade,
            "skipped": skipped,
        },
    )
    return resolution


def resolve_patients(
    session: Session,
    items: Sequence[tuple[SourceRecord, SourcePatient]],
    *,
    settings: MatchSettings | None = None,
    model: MatchModel | None = None,
) -> list[Resolution]:
    """Resolve source Patient records (already stored and flushed) into golden records.

    Records are resolved in order, so later ones see earlier ones. Does not commit.
    """
    settings = settings or MatchSettings()
    model = model or load_active_model(session)
    prepared = []
    for row, patient in items:
        features = extract_features(patient)
        prepared.append((row, patient, features, block_keys(features)))
    lock_block_keys(session, [key for *_, keys in prepared for key in keys])
    return [_resolve_one(session, settings, model, *p) for p in prepared]
