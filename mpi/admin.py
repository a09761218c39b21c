"""What stewards and the admin API use: $match, review queue, decisions, crosswalk, training.

Plain functions over a session; the gateway's routes and the CLI only adapt them. Nothing
here commits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from fhir_mapping import SourcePatient
from mpi.blocking import block_keys
from mpi.decision import (
    DUPLICATE_GOLDEN,
    MAX_MERGE_GUARD_MEMBERS,
    Member,
    corroborated,
    guard_vetoes,
    score_candidates,
)
from mpi.errors import (
    GoldenNotFound,
    InvalidOperation,
    MergeRefused,
    RecordNotFound,
    ReviewItemNotFound,
)
from mpi.evaluate import Evaluation, evaluate_clusters
from mpi.features import MatchFeatures, extract_features
from mpi.guards import LOOKALIKE_REASONS
from mpi.model import MatchModel, Score
from mpi.operations import (
    MAX_DECISION_PAIRS,
    link_record,
    lock_goldens,
    merge_golden,
    store_decision,
    unlink_record,
)
from mpi.resolve import candidate_members
from mpi.review import WITHDRAWN, settle_review_items
from mpi.settings import MatchSettings
from mpi.storage import (
    features_of,
    linked_record_ids,
    load_active_model,
    member_records,
    save_model,
)
from mpi.train import train_model
from store.models import GoldenPatient, Link, MatchDecision, ReviewItem, Source, SourceRecord
from store.types import utcnow

#: Columns of the crosswalk CSV (``askonce links export``).
CROSSWALK_COLUMNS = ("source", "resource_type", "resource_id", "golden_id", "grade", "score")
#: Default and largest page size of the review queue listing.
DEFAULT_REVIEW_PAGE = 50
MAX_REVIEW_PAGE = 500
#: Records loaded per query when training from the database.
TRAINING_BATCH = 5_000
DECISIONS = ("match", "no-match")


@dataclass(frozen=True, slots=True)
class MatchCandidate:
    """A golden record that may be the patient asked about (``Patient/$match``)."""

    golden_id: str
    score: float
    grade: str
    explanation: dict[str, Any]


def match_patient(
    session: Session,
    patient: SourcePatient,
    *,
    count: int = 10,
    only_certain: bool = False,
    settings: MatchSettings | None = None,
) -> list[MatchCandidate]:
    """Golden records matching ``patient``, best first; writes nothing.

    See https://hl7.org/fhir/R4/patient-operation-match.html.
    """
    settings = settings or MatchSettings()
    model = load_active_model(session)
    features = extract_features(patient)
    members, _skipped = candidate_members(session, settings, block_keys(features), None)
    candidates = score_candidates(model, settings, features, members)
    out: list[MatchCandidate] = []
    for c in candidates:
        if c.grade == "certainly-not" or (only_certain and c.grade != "certain"):
            continue
        grade = "possible" if c.vetoes else c.grade
        out.append(MatchCandidate(c.golden_id, round(c.score.total, 3), grade, c.evidence()))
    return out[:count]


@dataclass(frozen=True, slots=True)
class IdentityCheck:
    """Whether a record's identity could be that of a golden record's person."""

    #: False when the record carries no name, birth date, gender or identifier.
    comparable: bool
    #: The grade of its best score against the golden record's members (identity only).
    grade: str | None = None
    #: The guards that fire (a conflicting strong identifier, a twin, Jr/Sr…).
    vetoes: tuple[str, ...] = ()

    @property
    def contradicts(self) -> bool:
        return self.comparable and (self.grade == "certainly-not" or bool(self.vetoes))


def _identity(patient: SourcePatient) -> MatchFeatures:
    return extract_features(dataclasses.replace(patient, telecom=[], addresses=[]))


def _members(
    session: Session, golden_id: str, features: Callable[[SourcePatient], MatchFeatures]
) -> list[Member]:
    """The active records of ``golden_id`` as scoring members, their features by ``features``."""
    return [
        Member(m.record_id, golden_id, features(m.patient))
        for m in member_records(session, golden_id=golden_id)
    ]


def check_identity(
    session: Session,
    patient: SourcePatient,
    golden_id: str,
    *,
    settings: MatchSettings | None = None,
) -> IdentityCheck:
    """Compare the identity of ``patient`` (names, birth date, gender, identifiers) with
    the person of ``golden_id``; writes nothing.

    For a record that is said to be that person (a portal's form, whose subject the portal
    authenticated) rather than one to be matched: phone numbers and addresses are left out
    of the comparison, since a form that changes them is the point, and no corroboration
    is asked for. What remains must not score ``certainly-not`` and no guard may fire."""
    settings = settings or MatchSettings()
    features = _identity(patient)
    if not (
        features.names
        or features.birth_date
        or features.birth_year
        or features.gender
        or features.ssns
        or features.strong_ids
    ):
        return IdentityCheck(comparable=False)
    model = load_active_model(session)
    scored = [
        (member, model.score(features, member.features))
        for member in _members(session, golden_id, _identity)
    ]
    if not scored:
        return IdentityCheck(comparable=False)
    best = max(score.total for _, score in scored)
    vetoes, _cleared = guard_vetoes(features, scored, settings, LOOKALIKE_REASONS)
    return IdentityCheck(True, settings.grade(best), tuple(vetoes))


@dataclass(frozen=True, slots=True)
class MergeCheck:
    """What the records of two golden records say about merging one into the other."""

    source_id: str
    target_id: str
    #: The best score between a record of one and a record of the other, and its grade
    #: (None when one of them holds no active record).
    score: float | None
    grade: str | None
    #: The guards that fire between their records (a conflicting SSN, a twin, Jr/Sr…).
    vetoes: tuple[str, ...] = ()
    #: Pairs of records, one of each, that a data steward said are two people.
    declined: tuple[tuple[int, int], ...] = ()
    #: False when the best pair agrees on names, birth date and sex alone (nothing else,
    #: identifiers, contact data or address, speaks for it: how namesakes look too).
    corroborated: bool = True

    @property
    def refusals(self) -> list[str]:
        """Why the two look like two people (empty: nothing speaks against the merge)."""
        out = []
        if self.declined:
            out.append("a data steward decided that records of the two are different people")
        if self.vetoes:
            out.append(f"guards veto it ({', '.join(self.vetoes)})")
        if self.grade == "certainly-not":
            out.append("their records score certainly-not")
        return out


def _active(session: Session, golden_id: str) -> None:
    golden = session.get(GoldenPatient, golden_id)
    if golden is None:
        raise GoldenNotFound(golden_id)
    if golden.status != "active":
        raise InvalidOperation(f"golden record {golden_id} is {golden.status}")


def check_merge(
    session: Session,
    source_id: str,
    target_id: str,
    *,
    settings: MatchSettings | None = None,
) -> MergeCheck:
    """Score every record of ``source_id`` against those of ``target_id`` (both active
    golden records), run the guards between them and look for a steward's "no-match"
    between them; writes nothing.

    The same rules that keep the engine from joining two people: a hard conflict (another
    SSN or strong identifier, Jr/Sr) between any two records, a look-alike (twin,
    household member) against every record of the other, or a ``certainly-not`` best
    score. A steward's merge honours them unless told otherwise (:func:`merge_patients`).
    """
    settings = settings or MatchSettings()
    if source_id == target_id:
        raise InvalidOperation("a golden record cannot be merged into itself")
    _active(session, source_id)
    _active(session, target_id)
    model = load_active_model(session)
    ours = _members(session, source_id, extract_features)[:MAX_MERGE_GUARD_MEMBERS]
    theirs = _members(session, target_id, extract_features)[:MAX_MERGE_GUARD_MEMBERS]
    best: Score | None = None
    vetoes: list[str] = []
    for member in ours if theirs else ():
        scored = [(other, model.score(member.features, other.features)) for other in theirs]
        top = max((score for _, score in scored), key=lambda score: score.total)
        best = top if best is None or top.total > best.total else best
        found, _cleared = guard_vetoes(member.features, scored, settings, LOOKALIKE_REASONS)
        vetoes.extend(v for v in found if v not in vetoes)
    records_a = linked_record_ids(session, source_id)
    records_b = linked_record_ids(session, target_id)
    a, b = MatchDecision.record_a_id, MatchDecision.record_b_id
    declined = session.execute(
        select(a, b)
        .where(
            MatchDecision.decision == "no-match",
            or_(
                and_(a.in_(records_a), b.in_(records_b)),
                and_(a.in_(records_b), b.in_(records_a)),
            ),
        )
        .order_by(a, b)
    ).all()
    return MergeCheck(
        source_id,
        target_id,
        round(best.total, 3) if best is not None else None,
        settings.grade(best.total) if best is not None else None,
        tuple(vetoes),
        tuple((x, y) for x, y in declined),
        corroborated(best) if best is not None else True,
    )


#: Likely duplicates a steward is shown at most.
MAX_DUPLICATES = 20


def likely_duplicates(
    session: Session,
    golden_id: str,
    *,
    count: int = 5,
    settings: MatchSettings | None = None,
) -> list[MergeCheck]:
    """Other active golden records that may be this one's person, best first; writes
    nothing. Each is its :func:`check_merge` with this record as the target.

    Every record of ``golden_id`` is matched as :func:`resolve_patients` matches a new
    one (the same blocking, scoring and guards), against the records of every other
    golden record; one whose best pair grades at least ``possible`` is a candidate, unless
    its records say two people (a guard, a ``certainly-not`` pair, a steward's
    "no-match"). The engine kept the two apart (it links at ``probable`` with
    corroboration), so these are what a steward may want to merge, or to mark as two."""
    settings = settings or MatchSettings()
    _active(session, golden_id)
    model = load_active_model(session)
    best: dict[str, float] = {}
    for member in _members(session, golden_id, extract_features)[:MAX_MERGE_GUARD_MEMBERS]:
        members, _skipped = candidate_members(
            session, settings, block_keys(member.features), member.record_id
        )
        others = [m for m in members if m.golden_id != golden_id]
        for candidate in score_candidates(model, settings, member.features, others):
            total = candidate.score.total
            if candidate.grade != "certainly-not" and total > best.get(candidate.golden_id, -1e9):
                best[candidate.golden_id] = total
    out: list[MergeCheck] = []
    for other in sorted(best, key=lambda g: (-best[g], g)):
        if len(out) >= min(count, MAX_DUPLICATES):
            break
        try:
            check = check_merge(session, other, golden_id, settings=settings)
        except InvalidOperation:  # merged or deleted since its records were read
            continue
        if not check.refusals:
            out.append(check)
    return out


def merge_patients(
    session: Session,
    source_id: str,
    target_id: str,
    *,
    actor: str,
    settings: MatchSettings | None = None,
    override: bool = False,
    note: str | None = None,
) -> tuple[GoldenPatient, MergeCheck]:
    """A steward's merge of golden record ``source_id`` into ``target_id``, which survives
    (``Patient/$merge``, the console, the admin API); does not commit.

    Refused (:class:`MergeRefused`) when :func:`check_merge` finds that the records say
    they are two people, unless ``override``: a steward who has looked at the evidence
    may merge anyway, and a "no-match" between the two then becomes a "match" (the
    later decision replaces the earlier one). The merge itself is
    :func:`mpi.operations.merge_golden`: links move, the source answers ``replaced-by``,
    a ``patient.merged`` event; :func:`mpi.operations.unmerge_golden` undoes it. Open
    review items that asked whether a record now in the target is its person are
    resolved as "match" by ``actor``."""
    settings = settings or MatchSettings()
    lock_goldens(session, (source_id, target_id))  # what the check reads stays so
    check = check_merge(session, source_id, target_id, settings=settings)
    refusals = check.refusals
    if refusals and not override:
        raise MergeRefused(refusals, check)
    for x, y in check.declined:
        store_decision(session, x, y, "match", actor, note or "merged by a steward")
    explanation: dict[str, Any] = {"steward": "merge", "grade": check.grade, "score": check.score}
    if refusals:
        explanation["overridden"] = refusals
    if note:
        explanation["note"] = note
    survivor = merge_golden(
        session, source_id, target_id, actor=actor, settings=settings, explanation=explanation
    )
    _answered(session, target_id, actor)
    return survivor, check


def _answered(session: Session, golden_id: str, actor: str) -> None:
    """Resolve as "match" the open items a steward's merge answered: whether a record now
    linked to ``golden_id`` is that person. (An automatic merge leaves them open for a
    steward, :mod:`mpi.review`; here the steward has said it.)"""
    now = utcnow()
    for item in session.scalars(
        select(ReviewItem).where(
            ReviewItem.status == "open",
            ReviewItem.golden_id == golden_id,
            ReviewItem.source_record_id.in_(
                select(Link.source_record_id).where(Link.golden_id == golden_id)
            ),
        )
    ):
        item.status, item.resolution, item.resolved_by, item.resolved_at = (
            "resolved",
            "match",
            actor,
            now,
        )
        item.evidence = {**(item.evidence or {}), "answered_by": "merge"}
    session.flush()


def review_item_dict(item: ReviewItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "kind": item.kind,
        "status": item.status,
        "source_record_id": item.source_record_id,
        "golden_id": item.golden_id,
        "other_golden_id": item.other_golden_id,
        "grade": item.grade,
        "score": item.score,
        "reason": item.reason,
        "evidence": item.evidence,
        "resolution": item.resolution,
        "resolved_by": item.resolved_by,
        "resolved_at": item.resolved_at.isoformat() if item.resolved_at else None,
        "created_at": item.created_at.isoformat() if item.created_at else None,
    }


def list_review_items(
    session: Session, *, status: str = "open", limit: int = DEFAULT_REVIEW_PAGE, offset: int = 0
) -> list[dict[str, Any]]:
    """The review queue, oldest first."""
    limit = max(1, min(limit, MAX_REVIEW_PAGE))
    items = session.scalars(
        select(ReviewItem)
        .where(ReviewItem.status == status)
        .order_by(ReviewItem.created_at, ReviewItem.id)
        .limit(limit)
        .offset(offset)
    )
    return [review_item_dict(item) for item in items]


def get_review_item(session: Session, item_id: int) -> dict[str, Any]:
    item = session.get(ReviewItem, item_id)
    if item is None:
        raise ReviewItemNotFound(item_id)
    return review_item_dict(item)


def record_decision(
    session: Session,
    decision: str,
    *,
    actor: str,
    review_item_id: int | None = None,
    record_ids: tuple[int, int] | None = None,
    note: str | None = None,
    settings: MatchSettings | None = None,
) -> dict[str, Any]:
    """A steward's "match" or "no-match", on a review item or on a pair of source records.

    "match" links (or merges) now; "no-match" separates the records if they are together
    and keeps them apart forever: the algorithm never overrides a steward, even after
    retraining. Returns what was done.
    """
    if decision not in DECISIONS:
        raise InvalidOperation(f"decision must be one of {DECISIONS}")
    settings = settings or MatchSettings()
    if review_item_id is not None:
        return _decide_item(session, decision, actor, review_item_id, note, settings)
    if record_ids is None:
        raise InvalidOperation("name a review item or a pair of source records")
    a, b = record_ids
    goldens: list[str] = []
    for record_id in (a, b):
        golden = session.scalar(select(Link.golden_id).where(Link.source_record_id == record_id))
        if golden is None:
            raise RecordNotFound(record_id)
        goldens.append(golden)
    golden_a, golden_b = goldens
    store_decision(session, a, b, decision, actor, note)
    if decision == "match" and golden_a != golden_b:
        link_record(session, b, golden_a, actor=actor, settings=settings)
        return {"action": "linked", "golden_id": golden_a}
    if decision == "no-match" and golden_a == golden_b:
        new_id = unlink_record(session, b, actor=actor, settings=settings)
        return {"action": "unlinked", "golden_id": new_id}
    return {"action": "recorded", "golden_id": golden_a}


def _decide_item(
    session: Session,
    decision: str,
    actor: str,
    item_id: int,
    note: str | None,
    settings: MatchSettings,
) -> dict[str, Any]:
    item = session.get(ReviewItem, item_id)
    if item is None:
        raise ReviewItemNotFound(item_id)
    if item.status != "open":
        raise InvalidOperation(f"review item {item_id} is already {item.status}")
    # Decided against what its golden records are now: a merged one stands for its
    # survivor; an item whose question has gone is withdrawn, not decided.
    if settle_review_items(session, item_ids=[item_id]):
        return {
            "action": WITHDRAWN,
            "golden_id": item.golden_id,
            "reason": item.evidence.get(WITHDRAWN),
        }
    result: dict[str, Any]
    if item.kind == DUPLICATE_GOLDEN and item.golden_id and item.other_golden_id:
        if decision == "match":
            merge_golden(
                session, item.other_golden_id, item.golden_id, actor=actor, settings=settings
            )
            result = {"action": "merged", "golden_id": item.golden_id}
        else:
            _separate(session, item.golden_id, item.other_golden_id, actor, note)
            result = {"action": "recorded", "golden_id": item.golden_id}
    elif item.source_record_id is not None and item.golden_id is not None:
        record = item.source_record_id
        if decision == "match":
            link_record(session, record, item.golden_id, actor=actor, settings=settings)
            result = {"action": "linked", "golden_id": item.golden_id}
        else:
            result = _keep_apart(session, record, item.golden_id, actor, note, settings)
    else:
        raise InvalidOperation(f"review item {item_id} names nothing to decide on")
    item.status, item.resolution, item.resolved_by = "resolved", decision, actor
    item.resolved_at = utcnow()
    session.flush()
    return result


def _keep_apart(
    session: Session,
    record: int,
    golden_id: str,
    actor: str,
    note: str | None,
    settings: MatchSettings,
) -> dict[str, Any]:
    """A steward's "no-match" between a record and a golden record: never linked by the
    algorithm; if a merge brought the record in since it was queued, taken out again."""
    members = linked_record_ids(session, golden_id)
    if record in members and len(members) > 1:
        new_id = unlink_record(session, record, actor=actor, settings=settings)
        return {"action": "unlinked", "golden_id": new_id}
    for other in members[:MAX_DECISION_PAIRS]:
        if other != record:
            store_decision(session, record, other, "no-match", actor, note)
    return {"action": "recorded", "golden_id": golden_id}


def _separate(session: Session, a: str, b: str, actor: str, note: str | None) -> None:
    records_a, records_b = linked_record_ids(session, a), linked_record_ids(session, b)
    pairs = [(x, y) for x in records_a for y in records_b][:MAX_DECISION_PAIRS]
    for x, y in pairs:
        store_decision(session, x, y, "no-match", actor, note)


def crosswalk_rows(session: Session) -> Iterator[dict[str, Any]]:
    """One row per linked source Patient: ``CROSSWALK_COLUMNS``."""
    stmt = (
        select(
            Source.name,
            SourceRecord.resource_type,
            SourceRecord.resource_id,
            Link.golden_id,
            Link.grade,
            Link.score,
        )
        .join(SourceRecord, SourceRecord.id == Link.source_record_id)
        .join(Source, Source.id == SourceRecord.source_id)
        .where(SourceRecord.resource_type == "Patient")
        .order_by(Source.name, SourceRecord.resource_id)
        .execution_options(yield_per=TRAINING_BATCH)
    )
    for row in session.execute(stmt):
        yield dict(zip(CROSSWALK_COLUMNS, row, strict=True))


def train_from_database(
    session: Session, *, settings: MatchSettings | None = None, seed: int = 0
) -> MatchModel:
    """Retrain the model on every active source Patient and every steward decision, store
    it as the active model and return it."""
    settings = settings or MatchSettings()
    rows = session.execute(
        select(SourceRecord.id, SourceRecord.content_hash, SourceRecord.normalized)
        .where(SourceRecord.resource_type == "Patient", SourceRecord.status == "active")
        .order_by(SourceRecord.id)
        .execution_options(yield_per=TRAINING_BATCH)
    )
    index: dict[int, int] = {}
    features: list[MatchFeatures] = []
    for record_id, content_hash, normalized in rows:
        index[record_id] = len(features)
        features.append(features_of(record_id, content_hash, normalized or {}))
    labels = [
        (index[a], index[b], decision == "match")
        for a, b, decision in session.execute(
            select(MatchDecision.record_a_id, MatchDecision.record_b_id, MatchDecision.decision)
        )
        if a in index and b in index
    ]
    model = train_model(
        features, settings, labels=labels, seed=seed, base=load_active_model(session)
    )
    save_model(session, model)
    return model


def evaluate_links(
    session: Session, truth: Sequence[tuple[str, str, str, str, Sequence[str]]]
) -> Evaluation:
    """Score the current links against a truth of (source, type, id, person, tags) rows."""
    golden_of = {
        (row["source"], row["resource_type"], row["resource_id"]): row["golden_id"]
        for row in crosswalk_rows(session)
    }
    person_of = {(s, t, i): p for s, t, i, p, _ in truth}
    tags = {(s, t, i): list(g) for s, t, i, _, g in truth}
    return evaluate_clusters(golden_of, person_of, tags)
