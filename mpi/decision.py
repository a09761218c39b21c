"""The decision: which golden record an incoming record joins, and what goes to review.

Pure logic shared by the database engine (:mod:`mpi.resolve`) and the in-memory batch
engine (:mod:`mpi.batch`):

- a steward's "match" decision wins; a "no-match" pair is never linked automatically;
- the score of a golden record is the best score against any of its source records;
- ``certain`` and ``probable`` link automatically (``probable`` is flagged), unless a
  guard vetoes (a conflict with any member, a look-alike pattern against every member
  that scores high enough to link): then the record gets its own golden record and a
  ``vetoed`` review item;
- an automatic link needs corroboration beyond name, birth date and gender (contact data,
  address, identifiers agreeing more than they disagree); when none of those can be
  compared at all, a complete demographic match (given and family name, birth date,
  gender) with no competing golden record links as ``probable`` (flagged);
- ``possible`` opens a ``possible-match`` review item; lower becomes a new golden record;
- when several golden records qualify, the record joins the best one; the others are
  merged into it only when both pairs are ``certain``, no steward objects, no hard
  conflict stands between any two of their members, and every member of each could join
  the other (with the incoming record) without a look-alike veto; otherwise a
  ``duplicate-golden`` review item opens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mpi.comparisons import COMPARISONS
from mpi.features import MatchFeatures
from mpi.guards import LOOKALIKE_REASONS, guard_reasons, supported_lookalikes
from mpi.model import MatchModel, Score
from mpi.settings import MatchSettings

#: The kind of review item that asks whether two golden records are one person.
DUPLICATE_GOLDEN = "duplicate-golden"

AUTO_GRADES = frozenset({"certain", "probable"})
#: Comparisons two different people can share by coincidence (namesakes).
IDENTITY_COMPARISONS = frozenset({"given", "family", "birth_date", "gender"})
_IDENTITY_INDEX = tuple(
    [c.name for c in COMPARISONS].index(n) for n in ("given", "family", "birth_date", "gender")
)
#: Given-name levels of the same name: exact, nickname.
_SAME_GIVEN = frozenset({0, 1})
#: At most this many review items are opened for one incoming record.
MAX_REVIEW_ITEMS_PER_RECORD = 3
#: Members of a golden record compared when checking guards before an auto-merge.
MAX_MERGE_GUARD_MEMBERS = 50


@dataclass(slots=True)
class Member:
    """A source record already linked to a golden record."""

    record_id: int
    golden_id: str
    features: MatchFeatures


@dataclass(slots=True)
class Candidate:
    """One golden record scored against the incoming record."""

    golden_id: str
    record_id: int  # the best-scoring member
    score: Score
    grade: str
    vetoes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Members the incoming record could link to on its own: the pair scores at least
    #: ``probable`` and no look-alike guard fires (used to decide on merges).
    cleared: frozenset[int] = frozenset()
    #: The look-alike guards that apply (those the model's training data supports).
    lookalikes: frozenset[str] = LOOKALIKE_REASONS

    def evidence(self) -> dict[str, Any]:
        out = self.score.explanation()
        out["record_id"] = self.record_id
        if self.notes:
            out["notes"] = list(self.notes)
        if self.vetoes:
            out["vetoes"] = list(self.vetoes)
        return out


@dataclass(slots=True)
class ReviewSpec:
    kind: str  # possible-match | vetoed | duplicate-golden
    golden_id: str
    other_golden_id: str | None
    grade: str
    score: float
    reason: str
    evidence: dict[str, Any]


@dataclass(slots=True)
class Decision:
    """What to do with one incoming record."""

    golden_id: str | None  # None: a new golden record
    grade: str
    score: float | None
    method: str  # AUTO | MANUAL
    flagged: bool
    explanation: dict[str, Any]
    merge: list[str] = field(default_factory=list)  # golden ids merged into golden_id
    reviews: list[ReviewSpec] = field(default_factory=list)


def corroborated(score: Score) -> bool:
    """True when something beyond name, birth date and gender speaks for the match.

    Name and birth date alone cannot tell namesakes apart; an automatic link also needs
    the identifiers, contact data and address, taken together, to agree more than they
    disagree.
    """
    others = [w for name, w in score.contributions.items() if name not in IDENTITY_COMPARISONS]
    return sum(others) > 0


def _bare(f: MatchFeatures) -> bool:
    """A record with nothing but demographics: no phone, e-mail, identifier or address."""
    return not (f.phones or f.emails or f.ssns or f.strong_ids or f.other_ids or f.addresses)


def _nothing_to_compare(features: MatchFeatures, scored: list[tuple[Member, Score]]) -> bool:
    """True when there is nothing beyond name, birth date and gender to compare because
    one side of every pair carries nothing else (a bare registration), not because the
    two carry different kinds of contact data (which is how a namesake looks as often)."""
    return _bare(features) or all(_bare(member.features) for member, _ in scored)


def _complete_demographic_match(score: Score) -> bool:
    """Given name (or a nickname), family name, birth date and gender all present and equal."""
    given, family, birth, gender = (score.levels[i] for i in _IDENTITY_INDEX)
    return given in _SAME_GIVEN and family == 0 and birth == 0 and gender == 0


def guard_vetoes(
    features: MatchFeatures,
    scored: list[tuple[Member, Score]],
    settings: MatchSettings,
    lookalikes: frozenset[str],
) -> tuple[list[str], frozenset[int]]:
    """The guards that veto joining a golden record whose members are ``scored``, and the
    members the record could link to without a look-alike.

    A hard conflict (identifiers, suffixes) with any member vetoes. A look-alike guard
    (twin, Jr/Sr, household member) vetoes only when it fires against every member the
    record would link to on its own: a second person looks alike against all of the
    first one's records, while a registration slip in one member does not make the
    record a stranger to the others.
    """
    hard: list[str] = []
    lookalike: list[str] = []
    cleared: set[int] = set()  # linkable members without a look-alike
    for member, score in scored:
        reasons = guard_reasons(
            features, member.features, settings, score.levels, lookalikes=lookalikes
        )
        hard.extend(r for r in reasons if r not in LOOKALIKE_REASONS and r not in hard)
        if score.total < settings.probable:
            continue
        found = [r for r in reasons if r in LOOKALIKE_REASONS]
        lookalike.extend(r for r in found if r not in lookalike)
        if not found:
            cleared.add(member.record_id)
    return (hard if cleared else hard + lookalike), frozenset(cleared)


def score_candidates(
    model: MatchModel,
    settings: MatchSettings,
    features: MatchFeatures,
    members: list[Member],
) -> list[Candidate]:
    """Every golden record among ``members``, best first, with guards checked."""
    best: dict[str, tuple[Score, int]] = {}
    backed: set[str] = set()  # golden records with a corroborated, linkable member pair
    by_golden: dict[str, list[tuple[Member, Score]]] = {}
    for member in members:
        score = model.score(features, member.features)
        by_golden.setdefault(member.golden_id, []).append((member, score))
        current = best.get(member.golden_id)
        if current is None or score.total > current[0].total:
            best[member.golden_id] = (score, member.record_id)
        if score.total >= settings.probable and corroborated(score):
            backed.add(member.golden_id)
    out: list[Candidate] = []
    lookalikes = (
        supported_lookalikes(model.lookalike_rates)
        if settings.lookalike_guards_from_training
        else LOOKALIKE_REASONS
    )
    rivals = sum(1 for score, _ in best.values() if score.total >= settings.possible)
    for golden_id, (score, record_id) in best.items():
        grade = settings.grade(score.total)
        uncorroborated = settings.require_corroboration and golden_id not in backed
        notes = ["uncorroborated"] if uncorroborated else []
        # Nothing beyond the demographics can be compared, and they agree completely:
        # nothing contradicts the match either. Linked, but flagged, and only when no
        # other golden record competes (a namesake would).
        unopposed = (
            uncorroborated
            and grade == "certain"
            and rivals == 1
            and _complete_demographic_match(score)
            and _nothing_to_compare(features, by_golden[golden_id])
        )
        if unopposed:
            grade, uncorroborated, notes = "probable", False, ["nothing-to-compare"]
        if grade in AUTO_GRADES and uncorroborated:
            grade = "possible"
        candidate = Candidate(
            golden_id, record_id, score, grade, notes=notes, lookalikes=lookalikes
        )
        if grade in AUTO_GRADES:
            candidate.vetoes, candidate.cleared = guard_vetoes(
                features, by_golden[golden_id], settings, lookalikes
            )
        out.append(candidate)
    out.sort(key=lambda c: _rank(c, by_golden[c.golden_id]))
    return out


def _rank(candidate: Candidate, scored: list[tuple[Member, Score]]) -> tuple[float, float, int]:
    """The order of candidates: best score first; on equal best scores, the golden record
    whose scored members agree with the incoming record more on average (a record that
    holds a second person's registration scores worse for it), then the one whose oldest
    scored member was stored first (record ids grow with storage order). Never the golden
    id: golden ids are random, so the same data had filed its ties differently each run."""
    mean = sum(score.total for _, score in scored) / len(scored)
    return (-candidate.score.total, -mean, min(member.record_id for member, _ in scored))


def _merge_allowed(
    best: Candidate,
    other: Candidate,
    by_golden: dict[str, list[Member]],
    settings: MatchSettings,
    blocked: set[str],
) -> bool:
    """Whether ``other`` may be merged into ``best`` (the incoming record links to both).

    A hard conflict (identifiers, suffixes) between any two members forbids it. Look-alike
    guards follow the linking rule: each member of either golden record must be one the
    other side (its members and the incoming record) would take in, i.e. some member or
    the incoming record itself is free of a look-alike with it. A record whose given name
    was replaced looks like a twin of the second record of the same person, while a real
    twin looks alike against every record of the sibling (and vetoes the incoming one).
    """
    a = by_golden.get(best.golden_id, [])[:MAX_MERGE_GUARD_MEMBERS]
    b = by_golden.get(other.golden_id, [])[:MAX_MERGE_GUARD_MEMBERS]
    if any(m.golden_id in blocked for m in b):
        return False
    accepted_a = {x.record_id for x in a if x.record_id in best.cleared}
    accepted_b = {y.record_id for y in b if y.record_id in other.cleared}
    for x in a:
        for y in b:
            reasons = guard_reasons(x.features, y.features, settings, lookalikes=best.lookalikes)
            if any(r not in LOOKALIKE_REASONS for r in reasons):
                return False
            if not reasons:
                accepted_a.add(x.record_id)
                accepted_b.add(y.record_id)
    return len(accepted_a) == len(a) and len(accepted_b) == len(b)


def decide(
    candidates: list[Candidate],
    settings: MatchSettings,
    *,
    members: list[Member],
    manual_match: str | None = None,
    no_match: set[str] | None = None,
) -> Decision:
    """Decide for one incoming record given its scored candidates.

    ``manual_match`` is a golden record a steward said this record belongs to;
    ``no_match`` holds golden records a steward said it does not belong to.
    """
    blocked = no_match or set()
    if manual_match is not None:
        chosen = next((c for c in candidates if c.golden_id == manual_match), None)
        explanation: dict[str, Any] = chosen.evidence() if chosen else {}
        explanation["steward"] = "match"
        return Decision(
            manual_match,
            "certain",
            chosen.score.total if chosen else None,
            "MANUAL",
            False,
            explanation,
        )
    allowed = [c for c in candidates if c.golden_id not in blocked]
    auto = [c for c in allowed if c.grade in AUTO_GRADES and not c.vetoes]
    reviews: list[ReviewSpec] = []
    if not auto:
        for c in allowed:
            if c.grade in AUTO_GRADES:  # vetoed
                reviews.append(
                    ReviewSpec(
                        "vetoed",
                        c.golden_id,
                        None,
                        c.grade,
                        c.score.total,
                        ",".join(c.vetoes),
                        c.evidence(),
                    )
                )
            elif c.grade == "possible":
                reviews.append(
                    ReviewSpec(
                        "possible-match",
                        c.golden_id,
                        None,
                        c.grade,
                        c.score.total,
                        "possible-match",
                        c.evidence(),
                    )
                )
        return Decision(
            None,
            "certainly-not",
            None,
            "AUTO",
            False,
            {},
            reviews=reviews[:MAX_REVIEW_ITEMS_PER_RECORD],
        )
    best = auto[0]
    decision = Decision(
        best.golden_id,
        best.grade,
        best.score.total,
        "AUTO",
        best.grade == "probable",
        best.evidence(),
    )
    by_golden: dict[str, list[Member]] = {}
    for member in members:
        by_golden.setdefault(member.golden_id, []).append(member)
    for other in auto[1:]:
        both_certain = best.grade == "certain" and other.grade == "certain"
        if both_certain and _merge_allowed(best, other, by_golden, settings, blocked):
            decision.merge.append(other.golden_id)
        else:
            reviews.append(
                ReviewSpec(
                    DUPLICATE_GOLDEN,
                    best.golden_id,
                    other.golden_id,
                    other.grade,
                    other.score.total,
                    "possible-duplicate-golden",
                    other.evidence(),
                )
            )
    decision.reviews = reviews[:MAX_REVIEW_ITEMS_PER_RECORD]
    return decision
