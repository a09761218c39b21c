"""Guards: patterns that veto an automatic link however high the score.

Fellegi-Sunter weights add up evidence; some pairs look alike on almost everything and
are still two people. A guard names the pattern; a vetoed pair goes to the review queue
with that name as its reason. The guards:

- ``conflicting-ssn``: both records carry a valid SSN and they differ (unless one
  keystroke apart while given name, family name and birth date agree: a typo);
- ``conflicting-identifier``: both carry a strong identifier (national id, passport,
  driver's licence) of the same system, with different values (the same typo exception);
- ``twin``: same birth date, given names that are clearly different (not nickname
  equivalents, not one typo apart, not an initial of the other, not given and family
  swapped), and the same (or a misspelt) family name or the same home (address or phone);
- ``jr-sr``: same full name (the family name maybe misspelt), birth dates at least 15
  years apart (at the same address or not: a son who moved out is still not his father);
- ``different-suffix``: generational suffixes differ (Jr versus Sr, II versus III);
- ``household-member``: same address or phone, but the given name disagrees and the
  birth date is not the same (spouses, siblings, parent and child, whatever their family names).

The look-alike guards (twin, Jr/Sr, household member) apply unless the model's training
data shows that it holds no such look-alikes (:func:`supported_lookalikes`): in data
where registration errors replace whole given names or birth dates and no families are
present, those patterns are duplicates, and vetoing them only splits people.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

from rapidfuzz.distance import OSA

from fhir_mapping import nickname_keys, nickname_pairs
from mpi.comparisons import (
    COMPARISONS,
    AddressComparison,
    FamilyNameComparison,
    GivenNameComparison,
    IdentifierComparison,
    NamePair,
    align_names,
    compare_records,
)
from mpi.features import MatchFeatures
from mpi.settings import MatchSettings

_LEVEL_INDEX = tuple(
    [c.name for c in COMPARISONS].index(name)
    for name in ("given", "family", "birth_date", "address")
)
_IDENTIFIER = IdentifierComparison()
_GIVEN, _FAMILY, _ADDRESS = GivenNameComparison(), FamilyNameComparison(), AddressComparison()
IDENTIFIER_TYPO_LEVEL = 1
#: Given-name levels that still mean "the same given name" (exact, nickname, typo, sound).
_SAME_GIVEN_LEVELS = frozenset({0, 1, 2, 3})
_PHONETIC_LEVEL = 3
#: Edits (optimal string alignment) at which two given names are one typo apart.
GIVEN_TYPO_EDITS = 1
#: Shortest given name checked for being a mistyped nickname of the other.
MIN_NICKNAME_TYPO_LENGTH = 5
#: Family-name levels that mean "the same family name, maybe misspelt".
_SIMILAR_FAMILY_LEVELS = frozenset({0, 1, 2, 3})
#: Given-name levels of the same name: exact, nickname, a typo (Jaro-Winkler >= 0.92).
_TYPO_GIVEN_LEVELS = frozenset({0, 1, 2})
#: Birth-date levels of the same date: exact, day/month swapped, one digit off.
_NEAR_BIRTH_LEVELS = frozenset({0, 1, 2})
#: Edits at which two identifier values are one keystroke apart.
IDENTIFIER_SLIP_EDITS = 1
#: Address levels that mean "the same street address".
_SAME_ADDRESS_LEVELS = frozenset({0, 1})
#: Birth-date levels that mean "not the same birth date" (a typo is no proof of identity
#: when the given names differ too).
_DIFFERENT_BIRTH_LEVELS = frozenset({1, 2, 3, 4})


TWIN, JR_SR, HOUSEHOLD = "twin", "jr-sr", "household-member"
#: Guards that name a look-alike (a second person who resembles the first); the others
#: name a hard conflict (identifiers, suffixes).
LOOKALIKE_REASONS = frozenset({TWIN, JR_SR, HOUSEHOLD})
#: Stratum pairs needed before training data may switch a look-alike guard off.
MIN_LOOKALIKE_STRATUM_PAIRS = 100
#: A look-alike pattern showing in its stratum more than this many times as often as
#: among true duplicates means the data holds such look-alikes: the guard applies.
LOOKALIKE_EXCESS = 2.0


def _conflicting_systems(
    a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]
) -> list[tuple[set[str], set[str]]]:
    """The values of each identifier system both records carry without a value in common."""
    if not a or not b:
        return []
    systems_a: dict[str, set[str]] = {}
    for system, value in a:
        systems_a.setdefault(system, set()).add(value)
    systems_b: dict[str, set[str]] = {}
    for system, value in b:
        systems_b.setdefault(system, set()).add(value)
    return [
        (systems_a[system], systems_b[system])
        for system in sorted(systems_a.keys() & systems_b)
        if not (systems_a[system] & systems_b[system])
    ]


def _one_keystroke(xs: Iterable[str], ys: Iterable[str]) -> bool:
    """Some value of ``xs`` is one keystroke (substitution, transposition, insertion or
    deletion) from some value of ``ys``."""
    ys = list(ys)
    return any(
        OSA.distance(x, y, score_cutoff=IDENTIFIER_SLIP_EDITS) <= IDENTIFIER_SLIP_EDITS
        for x in xs
        for y in ys
    )


def _same_person_otherwise(levels: Sequence[int | None]) -> bool:
    """Given name (maybe a nickname or a typo), family name (maybe misspelt) and birth date
    (maybe one digit off or day and month swapped) all agree."""
    given, family, birth, _address = (levels[i] for i in _LEVEL_INDEX)
    return (
        given in _TYPO_GIVEN_LEVELS
        and family in _SIMILAR_FAMILY_LEVELS
        and birth in _NEAR_BIRTH_LEVELS
    )


def _same_identity(a: MatchFeatures, b: MatchFeatures) -> bool:
    """A shared SSN, identifier or e-mail, or an identifier one typo apart (not an SSN:
    twins' SSNs are often consecutive)."""
    if (a.ssns & b.ssns) or (a.emails & b.emails):
        return True
    ids_a, ids_b = a.strong_ids | a.other_ids, b.strong_ids | b.other_ids
    if ids_a & ids_b:
        return True
    return _IDENTIFIER.compare(a, b, None) == IDENTIFIER_TYPO_LEVEL


def _typo_close_given(names: NamePair | None) -> bool:
    """True when the given names are one typo apart or one is the other's initial
    ("Jon" / "Jno", "J" / "John"): a registration slip, not a second person. Sounding
    alike is not enough: Hassan and Hussein are two boys."""
    if names is None or names.swapped:
        return names is not None
    x, y = names.a.given.replace(" ", ""), names.b.given.replace(" ", "")
    if not x or not y:
        return False
    if len(x) == 1 or len(y) == 1:
        return x[0] == y[0]
    if OSA.distance(x, y, score_cutoff=GIVEN_TYPO_EDITS) <= GIVEN_TYPO_EDITS:
        return True
    return _typo_of_equivalent(x, y) or _typo_of_equivalent(y, x)


@lru_cache(maxsize=1)
def _names_by_key() -> dict[str, frozenset[str]]:
    """Every name of the nickname table under each of its equivalence keys."""
    out: dict[str, set[str]] = {}
    for pair in nickname_pairs():
        for name in pair:
            for key in nickname_keys(name):
                out.setdefault(key, set()).add(name)
    return {key: frozenset(names) for key, names in out.items()}


def _typo_of_equivalent(x: str, y: str) -> bool:
    """True when ``x`` is one keystroke from a nickname equivalent of ``y`` ("Debbei" is
    "Debbie" mistyped, and "Debbie" is "Deborah")."""
    if len(x) < MIN_NICKNAME_TYPO_LENGTH:
        return False  # short names are one keystroke from too many others
    table = _names_by_key()
    return any(
        OSA.distance(x, name, score_cutoff=GIVEN_TYPO_EDITS) <= GIVEN_TYPO_EDITS
        for key in nickname_keys(y)
        for name in table.get(key, ())
    )


def _clearly_different_given(
    a: MatchFeatures, b: MatchFeatures, given: int | None, names: NamePair | None
) -> bool:
    # Sounding alike is not enough for twins: Hassan and Hussein are two boys.
    if given is None or given in _SAME_GIVEN_LEVELS - {_PHONETIC_LEVEL}:
        return False
    return not _typo_close_given(names if names is not None else align_names(a, b))


def _shares_home(a: MatchFeatures, b: MatchFeatures, address: int | None) -> bool:
    return address in _SAME_ADDRESS_LEVELS or bool(a.phones & b.phones)


def _years_apart(a: MatchFeatures, b: MatchFeatures) -> int | None:
    if a.birth_year is None or b.birth_year is None:
        return None
    return abs(a.birth_year - b.birth_year)


def lookalike_patterns(
    a: MatchFeatures,
    b: MatchFeatures,
    settings: MatchSettings,
    levels: Sequence[int | None] | None = None,
    names: NamePair | None = None,
) -> dict[str, bool]:
    """For training: each look-alike pattern whose *stratum* the pair belongs to, and
    whether the pair shows the pattern.

    - ``twin``: stratum "same birth date and a similar family name or a shared home";
      pattern "clearly different given names";
    - ``jr-sr``: stratum "same full name (family name maybe misspelt) and a shared home,
      both birth years known"; pattern "birth years at least ``jr_sr_min_years`` apart".

    A stratum holds the pairs that only a duplicate or a relative explains (strangers
    rarely share a birth date and a family name, or a full name and a home). How often
    the pattern shows in its stratum, compared with how often it shows among true
    duplicates, says whether the data holds such look-alikes at all (see
    :func:`supported_lookalikes`). ``levels`` (and ``names``) when already compared;
    otherwise only the comparisons needed are made.
    """
    out: dict[str, bool] = {}
    same_birth = a.birth_date is not None and a.birth_date == b.birth_date
    years = _years_apart(a, b)
    if not a.names or not b.names or (not same_birth and years is None):
        return out
    if levels is None:
        names = align_names(a, b)
        given, family = _GIVEN.compare(a, b, names), _FAMILY.compare(a, b, names)
        address: int | None = -1  # not compared yet
    else:
        given, family, _birth, address = (levels[i] for i in _LEVEL_INDEX)
    similar_family = family is not None and family in _SIMILAR_FAMILY_LEVELS
    same_name = similar_family and given in _SAME_GIVEN_LEVELS
    if (same_birth and not similar_family) or (same_name and years is not None):
        if address == -1:
            address = _ADDRESS.compare(a, b, names)
        home = _shares_home(a, b, address)
    else:
        home = False
    if same_birth and given is not None and (similar_family or home):
        out[TWIN] = _clearly_different_given(a, b, given, names)
    if same_name and years is not None and home:
        out[JR_SR] = years >= settings.jr_sr_min_years
    return out


def supported_lookalikes(rates: dict[str, dict[str, float]] | None) -> frozenset[str]:
    """The look-alike guards the training data supports (all of them when unknown).

    ``rates`` holds, per pattern, the stratum pairs seen (``pairs``), the share of them
    showing the pattern (``observed``) and the share of true duplicates showing it
    (``duplicates``, from EM). A look-alike guard exists because a second person (a
    twin, a father) explains the pattern better than a registration error. When the
    pattern shows in its stratum no more often than registration errors alone make it
    show among duplicates (e.g. data where given names or birth dates are often
    replaced, and no families), the data holds no such look-alikes, and the guard would
    only veto duplicates: it is not applied. ``household-member`` stays while either
    pattern does. With too few stratum pairs to tell, every guard stays.
    """
    out = set(LOOKALIKE_REASONS)
    for pattern in (TWIN, JR_SR):
        rate = (rates or {}).get(pattern)
        if rate is None or rate.get("pairs", 0) < MIN_LOOKALIKE_STRATUM_PAIRS:
            continue
        if rate["observed"] <= LOOKALIKE_EXCESS * rate["duplicates"]:
            out.discard(pattern)
    if TWIN not in out and JR_SR not in out:
        out.discard(HOUSEHOLD)
    return frozenset(out)


def guard_reasons(
    a: MatchFeatures,
    b: MatchFeatures,
    settings: MatchSettings,
    levels: Sequence[int | None] | None = None,
    *,
    lookalikes: frozenset[str] = LOOKALIKE_REASONS,
) -> list[str]:
    """The guards that veto linking ``a`` and ``b`` automatically (empty: no veto).

    ``levels`` are the pair's comparison levels (in :data:`COMPARISONS` order) when the
    caller has already scored it; ``lookalikes`` the look-alike guards that apply (those
    the model's training data supports, :func:`supported_lookalikes`).
    """
    reasons: list[str] = []
    names: NamePair | None = None
    ssn_conflict = bool(a.ssns and b.ssns and not (a.ssns & b.ssns))
    id_conflicts = _conflicting_systems(a.strong_ids, b.strong_ids)
    slips = (not ssn_conflict or _one_keystroke(a.ssns, b.ssns)) and all(
        _one_keystroke(x, y) for x, y in id_conflicts
    )
    if (ssn_conflict or id_conflicts) and slips:
        # One keystroke apart: a typo when everything else says the same person; twins'
        # numbers are often issued in sequence, so a different given name keeps the veto.
        if levels is None:
            levels, names = compare_records(a, b)
        if _same_person_otherwise(levels):
            ssn_conflict, id_conflicts = False, []
    if ssn_conflict:
        reasons.append("conflicting-ssn")
    if id_conflicts:
        reasons.append("conflicting-identifier")
    if a.suffix and b.suffix and a.suffix != b.suffix:
        reasons.append("different-suffix")
    if (
        not settings.lookalike_guards
        or not lookalikes
        or not a.names
        or not b.names
        or _same_identity(a, b)
    ):
        # A shared SSN, identifier or e-mail address tells people apart better than any
        # look-alike pattern: twins and spouses do not share them.
        return reasons
    if levels is None:
        levels, names = compare_records(a, b)
    given, family, birth, address = (levels[i] for i in _LEVEL_INDEX)
    different_given = _clearly_different_given(a, b, given, names)
    same_birth = a.birth_date is not None and a.birth_date == b.birth_date
    similar_family = family is not None and family in _SIMILAR_FAMILY_LEVELS
    shares_home = _shares_home(a, b, address)
    if TWIN in lookalikes and same_birth and different_given and (similar_family or shares_home):
        reasons.append(TWIN)
    same_given = given in _SAME_GIVEN_LEVELS
    years_apart = _years_apart(a, b) or 0
    if (
        JR_SR in lookalikes
        and similar_family
        and same_given
        and years_apart >= settings.jr_sr_min_years
    ):
        reasons.append(JR_SR)
    if (
        HOUSEHOLD in lookalikes
        and shares_home
        and different_given
        and birth in _DIFFERENT_BIRTH_LEVELS
    ):
        reasons.append(HOUSEHOLD)
    return reasons
