"""Guards: patterns that veto an automatic link however high the score.

Fellegi-Sunter weights add up evidence; some pairs look alike on almost everything and
are still two people. A guard names the pattern; a vetoed pair goes to the review queue
with that name as its reason. The guards:

- ``conflicting-ssn``: both records carry a valid SSN and they differ;
- ``conflicting-identifier``: both carry a strong identifier (national id, passport,
  driver's licence) of the same system, with different values;
- ``twin``: same birth date, given names that are clearly different (not nickname
  equivalents, not one typo apart, not an initial of the other, not given and family
  swapped), and the same (or a misspelt) family name or the same home (address or phone);
- ``jr-sr``: same full name (the family name maybe misspelt), birth dates at least 15
  years apart (at the same address or not: a son who moved out is still not his father);
- ``different-suffix``: generational suffixes differ (Jr versus Sr, II versus III);
- ``household-member``: same address or phone, but the given name disagrees and the
  birth date is not the same (spouses, siblings, parent and child, whatever their family names).
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz.distance import OSA

from mpi.comparisons import (
    COMPARISONS,
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
IDENTIFIER_TYPO_LEVEL = 1
#: Given-name levels that still mean "the same given name" (exact, nickname, typo, sound).
_SAME_GIVEN_LEVELS = frozenset({0, 1, 2, 3})
_PHONETIC_LEVEL = 3
#: Edits (optimal string alignment) at which two given names are one typo apart.
GIVEN_TYPO_EDITS = 1
#: Family-name levels that mean "the same family name, maybe misspelt".
_SIMILAR_FAMILY_LEVELS = frozenset({0, 1, 2, 3})
#: Address levels that mean "the same street address".
_SAME_ADDRESS_LEVELS = frozenset({0, 1})
#: Birth-date levels that mean "not the same birth date" (a typo is no proof of identity
#: when the given names differ too).
_DIFFERENT_BIRTH_LEVELS = frozenset({1, 2, 3, 4})


#: Guards that name a look-alike (a second person who resembles the first); the others
#: name a hard conflict (identifiers, suffixes).
LOOKALIKE_REASONS = frozenset({"twin", "jr-sr", "household-member"})


def _conflict(a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]) -> bool:
    systems_a: dict[str, set[str]] = {}
    for system, value in a:
        systems_a.setdefault(system, set()).add(value)
    systems_b: dict[str, set[str]] = {}
    for system, value in b:
        systems_b.setdefault(system, set()).add(value)
    return any(
        not (systems_a[system] & systems_b[system]) for system in systems_a.keys() & systems_b
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
    return OSA.distance(x, y, score_cutoff=GIVEN_TYPO_EDITS) <= GIVEN_TYPO_EDITS


def guard_reasons(
    a: MatchFeatures,
    b: MatchFeatures,
    settings: MatchSettings,
    levels: Sequence[int | None] | None = None,
) -> list[str]:
    """The guards that veto linking ``a`` and ``b`` automatically (empty: no veto).

    ``levels`` are the pair's comparison levels (in :data:`COMPARISONS` order) when the
    caller has already scored it.
    """
    reasons: list[str] = []
    if a.ssns and b.ssns and not (a.ssns & b.ssns):
        reasons.append("conflicting-ssn")
    if _conflict(a.strong_ids, b.strong_ids):
        reasons.append("conflicting-identifier")
    if a.suffix and b.suffix and a.suffix != b.suffix:
        reasons.append("different-suffix")
    if not settings.lookalike_guards or not a.names or not b.names or _same_identity(a, b):
        # A shared SSN, identifier or e-mail address tells people apart better than any
        # look-alike pattern: twins and spouses do not share them.
        return reasons
    names: NamePair | None = None
    if levels is None:
        levels, names = compare_records(a, b)
    given, family, birth, address = (levels[i] for i in _LEVEL_INDEX)
    same_address = address in _SAME_ADDRESS_LEVELS
    # Sounding alike is not enough for twins: Hassan and Hussein are two boys.
    different_given = given is not None and given not in _SAME_GIVEN_LEVELS - {_PHONETIC_LEVEL}
    if different_given:
        if names is None:
            names = align_names(a, b)
        different_given = not _typo_close_given(names)
    same_birth = a.birth_date is not None and a.birth_date == b.birth_date
    similar_family = family is not None and family in _SIMILAR_FAMILY_LEVELS
    shares_home = same_address or bool(a.phones & b.phones)
    if same_birth and different_given and (similar_family or shares_home):
        reasons.append("twin")
    same_given = given in _SAME_GIVEN_LEVELS
    years_apart = abs(a.birth_year - b.birth_year) if a.birth_year and b.birth_year else 0
    if similar_family and same_given and years_apart >= settings.jr_sr_min_years:
        reasons.append("jr-sr")
    if shares_home and different_given and birth in _DIFFERENT_BIRTH_LEVELS:
        reasons.append("household-member")
    return reasons
