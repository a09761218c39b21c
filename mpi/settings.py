"""Match settings: the thresholds that turn a score into a grade, and blocking limits.

Scores are log2 Bayes factors summed over the comparisons (a "match weight", see
https://www.robinlinacre.com/maths_of_fellegi_sunter/), so a threshold of 10 means the
evidence makes a match about 1000 times more likely than before it was seen. Grades
follow the FHIR match-grade extension
(https://hl7.org/fhir/R4/extension-match-grade.html): ``certain``, ``probable``,
``possible``, ``certainly-not``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: log2 weight at or above which a pair is the same person beyond reasonable doubt.
DEFAULT_CERTAIN_THRESHOLD = 18.0
#: At or above: linked automatically, but flagged for a steward to look at.
DEFAULT_PROBABLE_THRESHOLD = 12.0
#: At or above: not linked; a review item asks a steward.
DEFAULT_POSSIBLE_THRESHOLD = 6.0
#: A block key shared by more records than this is skipped (and counted) during lookup.
DEFAULT_MAX_BLOCK_SIZE = 200
#: At most this many candidate source records (those sharing the most block keys) are
#: looked at for one incoming record; all members of their golden records are scored.
DEFAULT_MAX_CANDIDATES = 8
#: Birth dates at least this many years apart mark a Jr/Sr pair.
DEFAULT_JR_SR_MIN_YEARS = 15
#: Pairs sampled at random to estimate the u probabilities.
DEFAULT_U_SAMPLE_PAIRS = 30_000
#: EM iterations (and the change in m at which EM stops early).
DEFAULT_EM_ITERATIONS = 25
DEFAULT_EM_TOLERANCE = 1e-4
#: Survivorship rules per golden field, tried in order (see mpi.survivorship).
DEFAULT_SURVIVORSHIP = {
    "name": ("trust", "recency", "completeness"),
    "birthDate": ("trust", "completeness", "recency"),
    "gender": ("trust", "recency"),
    "identifier": ("trust", "recency"),
    "telecom": ("confirmed", "recency", "trust"),
    "address": ("confirmed", "recency", "trust"),
}


@dataclass(frozen=True, slots=True)
class MatchSettings:
    """How scores become decisions. Everything has a named default."""

    certain: float = DEFAULT_CERTAIN_THRESHOLD
    probable: float = DEFAULT_PROBABLE_THRESHOLD
    possible: float = DEFAULT_POSSIBLE_THRESHOLD
    max_block_size: int = DEFAULT_MAX_BLOCK_SIZE
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    jr_sr_min_years: int = DEFAULT_JR_SR_MIN_YEARS
    u_sample_pairs: int = DEFAULT_U_SAMPLE_PAIRS
    em_iterations: int = DEFAULT_EM_ITERATIONS
    em_tolerance: float = DEFAULT_EM_TOLERANCE
    #: Auto-link only when contact data, address or identifiers add to the evidence.
    require_corroboration: bool = True
    #: Veto look-alikes (twins, Jr/Sr, household members). Conflicting SSNs, identifiers
    #: and suffixes always veto. Turning this off trades overlays for recall: only for
    #: data known to hold no families (e.g. the Febrl benchmark sets).
    lookalike_guards: bool = True
    #: Let the active model's training data switch off a look-alike guard its data
    #: refutes (:func:`mpi.guards.supported_lookalikes`: e.g. no twins at all, only
    #: replaced given names). ``False`` applies every look-alike guard whatever the
    #: training saw: the conservative choice for an operator who wants no exception.
    lookalike_guards_from_training: bool = True
    survivorship: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_SURVIVORSHIP)
    )

    def __post_init__(self) -> None:
        if not self.certain >= self.probable >= self.possible:
            raise ValueError("thresholds must satisfy certain >= probable >= possible")

    def grade(self, score: float) -> str:
        """The match grade of a score."""
        if score >= self.certain:
            return "certain"
        if score >= self.probable:
            return "probable"
        if score >= self.possible:
            return "possible"
        return "certainly-not"
