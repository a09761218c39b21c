"""Comparisons: how two records agree on one field, as an ordered list of levels.

Fellegi-Sunter scoring (https://www.robinlinacre.com/maths_of_fellegi_sunter/) needs, for
each field, the *level* at which two records agree: exact, nickname, typo, phonetic… Each
comparison is a small class named for what it does; :meth:`Comparison.compare` returns the
index of the first level that holds (0 is the strongest agreement, the last is "else"), or
``None`` when a side lacks the field (which then contributes nothing).

To add a comparison: subclass :class:`Comparison`, set ``name``, ``levels`` and the
``default_m``/``default_u`` priors (used until a model is trained), implement ``compare``
and add an instance to :data:`COMPARISONS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from rapidfuzz.distance import OSA, Hamming, Indel, Jaro, JaroWinkler
from rapidfuzz.fuzz import token_set_ratio

from mpi.features import MatchFeatures, NameFeatures

#: Jaro-Winkler similarity of a likely typo, and of a weaker resemblance.
JW_HIGH = 0.92
JW_LOW = 0.80
#: token_set_ratio (0-100) at which two address lines are the same street address.
ADDRESS_LINE_SIMILAR = 90
#: Edits (optimal string alignment) at which two postal codes are one typo apart, and the
#: shortest postal code compared that way.
POSTAL_TYPO_EDITS = 1
MIN_POSTAL_TYPO_LENGTH = 4
#: Edits (optimal string alignment: insert, delete, substitute, transpose) of an id typo.
IDENTIFIER_TYPO_EDITS = 1
#: Digits in a complete birth date (YYYYMMDD).
BIRTH_DATE_DIGITS = 8


@dataclass(frozen=True, slots=True)
class NamePair:
    """The two names (one per record) compared, and whether given and family are swapped."""

    a: NameFeatures
    b: NameFeatures
    swapped: bool


def _name_affinity(a: NameFeatures, b: NameFeatures) -> float:
    family = (
        1.0
        if not a.family_variants.isdisjoint(b.family_variants)
        else JaroWinkler.similarity(a.family, b.family)
    )
    given = (
        1.0
        if not a.given_keys.isdisjoint(b.given_keys)
        else JaroWinkler.similarity(a.given_first, b.given_first)
    )
    return family + given


def _is_swapped(a: NameFeatures, b: NameFeatures) -> bool:
    if not (a.given_first and b.given_first and a.family and b.family):
        return False
    if a.given_first[0] != b.family[0] and a.family[0] != b.given_first[0]:
        return False  # both >= 0.92 with no shared first letter: not worth the two calls
    return (
        JaroWinkler.similarity(a.given_first, b.family) >= JW_HIGH
        and JaroWinkler.similarity(a.family, b.given_first) >= JW_HIGH
    )


def _flip(nb: NameFeatures) -> NameFeatures:
    return NameFeatures(
        given=nb.family,
        given_first=nb.family,
        given_tokens=nb.family_tokens,
        given_keys=frozenset({nb.family}),
        given_phonetic=nb.family_phonetic,
        family=nb.given_first,
        family_variants=frozenset({nb.given_first}),
        family_tokens=nb.given_tokens,
        family_phonetic=nb.given_phonetic,
        suffix=nb.suffix,
    )


def align_names(a: MatchFeatures, b: MatchFeatures) -> NamePair | None:
    """The best-matching pair of names of two records (they may carry several names)."""
    if len(a.names) == 1 and len(b.names) == 1:  # the common case, kept cheap
        na, nb = a.names[0], b.names[0]
        if not na.family_variants.isdisjoint(nb.family_variants) or not _is_swapped(na, nb):
            return NamePair(na, nb, False)
        flipped = _flip(nb)
        if _name_affinity(na, flipped) > _name_affinity(na, nb):
            return NamePair(na, flipped, True)
        return NamePair(na, nb, False)
    best: NamePair | None = None
    best_affinity = -1.0
    for na in a.names:
        for nb in b.names:
            affinity = _name_affinity(na, nb)
            if affinity > best_affinity:
                best, best_affinity = NamePair(na, nb, False), affinity
            if affinity < 1.0 + JW_HIGH and _is_swapped(na, nb):
                flipped = _flip(nb)
                swapped_affinity = _name_affinity(na, flipped)
                if swapped_affinity > best_affinity:
                    best, best_affinity = NamePair(na, flipped, True), swapped_affinity
    return best


def _multi_token_similarity(x: list[str], y: list[str]) -> float:
    """Similarity of multi-word given names: word by word when the counts agree (a typo in
    one word), else Jaro of the whole (no prefix bonus: "thi lan" and "thi hoa" share a
    prefix, not a name)."""
    if len(x) == len(y):
        return min(JaroWinkler.similarity(a, b) for a, b in zip(x, y, strict=True))
    return Jaro.similarity(" ".join(x), " ".join(y))


class Comparison(ABC):
    """One field's comparison levels. ``compare`` returns a level index or ``None``."""

    name: ClassVar[str]
    levels: ClassVar[tuple[str, ...]]
    default_m: ClassVar[tuple[float, ...]]
    default_u: ClassVar[tuple[float, ...]]
    #: Whether the first level's weight is adjusted by the term frequency of the value.
    term_frequency: ClassVar[bool] = False

    @abstractmethod
    def compare(self, a: MatchFeatures, b: MatchFeatures, names: NamePair | None) -> int | None:
        """The index of the first level that holds, or None when a side lacks the field."""

    def tf_value(self, names: NamePair | None) -> str | None:
        """The value whose frequency adjusts an exact agreement (names only)."""
        return None


class GivenNameComparison(Comparison):
    name = "given"
    levels = (
        "exact",
        "nickname",
        "jaro-winkler-0.92",
        "phonetic",
        "token-overlap",
        "jaro-winkler-0.80",
        "else",
    )
    default_m = (0.80, 0.06, 0.05, 0.02, 0.02, 0.02, 0.03)
    default_u = (0.01, 0.003, 0.004, 0.005, 0.01, 0.03, 0.938)
    term_frequency = True

    def compare(self, a: MatchFeatures, b: MatchFeatures, names: NamePair | None) -> int | None:
        if names is None or not names.a.given_first or not names.b.given_first:
            return None
        x, y = names.a, names.b
        # Equal strings (about half the pairs scored) are equal without their spaces.
        if x.given == y.given or x.given.replace(" ", "") == y.given.replace(" ", ""):
            return 0
        # One side gave only a first name ("John" / "John Michael"): compare first names.
        single = len(x.given_tokens) == 1 or len(y.given_tokens) == 1
        if single and x.given_first == y.given_first:
            return 0
        if single and not x.given_keys.isdisjoint(y.given_keys):
            return 1
        if single:
            similarity = JaroWinkler.similarity(x.given_first, y.given_first)
        else:
            similarity = _multi_token_similarity(x.given.split(), y.given.split())
        if similarity >= JW_HIGH:
            return 2
        if single and x.given_phonetic and x.given_phonetic == y.given_phonetic:
            return 3
        if not x.given_tokens.isdisjoint(y.given_tokens):
            return 4
        if similarity >= JW_LOW:
            return 5
        return 6

    def tf_value(self, names: NamePair | None) -> str | None:
        return names.a.given_first if names is not None else None


class FamilyNameComparison(Comparison):
    name = "family"
    levels = (
        "exact",
        "jaro-winkler-0.92",
        "phonetic",
        "token-overlap",
        "given-family-swapped",
        "jaro-winkler-0.80",
        "else",
    )
    default_m = (0.80, 0.05, 0.02, 0.03, 0.01, 0.02, 0.07)
    default_u = (0.005, 0.003, 0.004, 0.003, 0.0005, 0.02, 0.9645)
    term_frequency = True

    def compare(self, a: MatchFeatures, b: MatchFeatures, names: NamePair | None) -> int | None:
        if names is None or not names.a.family or not names.b.family:
            return None
        x, y = names.a, names.b
        if names.swapped:
            return 4
        if not x.family_variants.isdisjoint(y.family_variants):
            return 0
        similarity = JaroWinkler.similarity(x.family, y.family)
        if similarity >= JW_HIGH:
            return 1
        if x.family_phonetic and x.family_phonetic == y.family_phonetic:
            return 2
        if len(x.family_tokens | y.family_tokens) > 1 and not x.family_tokens.isdisjoint(
            y.family_tokens
        ):
            return 3
        if similarity >= JW_LOW:
            return 5
        return 6

    def tf_value(self, names: NamePair | None) -> str | None:
        return names.a.family if names is not None else None


def _one_digit_off(x: str, y: str) -> bool:
    return len(x) == len(y) and Hamming.distance(x, y, score_cutoff=1) == 1


class BirthDateComparison(Comparison):
    name = "birth_date"
    levels = ("exact", "day-month-transposed", "one-digit-off", "same-year", "else")
    default_m = (0.90, 0.02, 0.04, 0.02, 0.02)
    default_u = (0.00004, 0.00002, 0.0004, 0.012, 0.98754)

    def compare(self, a: MatchFeatures, b: MatchFeatures, names: NamePair | None) -> int | None:
        if a.birth_date and b.birth_date:
            if a.birth_date == b.birth_date:
                return 0
            if (
                a.birth_year == b.birth_year
                and a.birth_month == b.birth_day
                and a.birth_day == b.birth_month
            ):
                return 1
            # Year, month and day are fixed spans of digits: when two of them differ, so
            # do two digits at least (three pairs in four scored): no distance to compute.
            differing = (
                (a.birth_year != b.birth_year)
                + (a.birth_month != b.birth_month)
                + (a.birth_day != b.birth_day)
            )
            if differing == 1 and _one_digit_off(a.birth_date, b.birth_date):
                return 2
        if a.birth_year is None or b.birth_year is None:
            return None
        return 3 if a.birth_year == b.birth_year else 4


class GenderComparison(Comparison):
    name = "gender"
    levels = ("exact", "else")
    default_m = (0.98, 0.02)
    default_u = (0.5, 0.5)

    def compare(self, a: MatchFeatures, b: MatchFeatures, names: NamePair | None) -> int | None:
        if a.gender is None or b.gender is None:
            return None
        return 0 if a.gender == b.gender else 1


class _SetComparison(Comparison):
    levels = ("exact", "else")

    @abstractmethod
    def values(self, f: MatchFeatures) -> frozenset[str]:
        """The values of this field in one record."""

    def compare(self, a: MatchFeatures, b: MatchFeatures, names: NamePair | None) -> int | None:
        x, y = self.values(a), self.values(b)
        if not x or not y:
            return None
        return 1 if x.isdisjoint(y) else 0


class PhoneComparison(_SetComparison):
    name = "phone"
    default_m = (0.85, 0.15)
    default_u = (0.0001, 0.9999)

    def values(self, f: MatchFeatures) -> frozenset[str]:
        return f.phones


class EmailComparison(_SetComparison):
    name = "email"
    default_m = (0.85, 0.15)
    default_u = (0.00005, 0.99995)

    def values(self, f: MatchFeatures) -> frozenset[str]:
        return f.emails


def _typo(x: str, y: str) -> bool:
    return OSA.distance(x, y, score_cutoff=IDENTIFIER_TYPO_EDITS) <= IDENTIFIER_TYPO_EDITS


class SsnComparison(Comparison):
    name = "ssn"
    levels = ("exact", "one-typo", "else")
    default_m = (0.97, 0.02, 0.01)
    default_u = (0.000001, 0.00002, 0.999979)

    def compare(self, a: MatchFeatures, b: MatchFeatures, names: NamePair | None) -> int | None:
        if not a.ssns or not b.ssns:
            return None
        if not a.ssns.isdisjoint(b.ssns):
            return 0
        return 1 if any(_typo(x, y) for x in a.ssns for y in b.ssns) else 2


class IdentifierComparison(Comparison):
    """Other identifiers, compared only within one system (national ids, member ids…)."""

    name = "identifier"
    levels = ("exact", "one-typo", "else")
    default_m = (0.95, 0.03, 0.02)
    default_u = (0.00001, 0.0002, 0.99979)

    def compare(self, a: MatchFeatures, b: MatchFeatures, names: NamePair | None) -> int | None:
        if not (a.strong_ids or a.other_ids) or not (b.strong_ids or b.other_ids):
            return None  # nine pairs in ten: no set is built
        x, y = a.strong_ids | a.other_ids, b.strong_ids | b.other_ids
        if not x.isdisjoint(y):
            return 0
        shared = False
        typo = False
        for system_a, value_a in x:
            for system_b, value_b in y:
                if system_a == system_b:
                    shared = True
                    typo = typo or _typo(value_a, value_b)
        if not shared:
            return None
        return 1 if typo else 2


def _compact(line: str) -> str:
    return line.replace(" ", "")


def similar_lines(x: str, y: str) -> bool:
    """Two address lines name the same street address: the same words (one line may add
    a locality or an apartment), or the same letters but for a slipped space or one or
    two typos ("yalda ra" / "yaldara", "hillsidrfarm" / "hillside farm")."""
    if not x or not y:
        return False
    if token_set_ratio(x, y) >= ADDRESS_LINE_SIMILAR:
        return True
    return Indel.normalized_similarity(_compact(x), _compact(y)) * 100 >= ADDRESS_LINE_SIMILAR


def near_postal(x: str, y: str) -> bool:
    """The same postal code, or one keystroke apart (a substituted or transposed digit)."""
    if not x or not y:
        return False
    return x == y or (
        len(x) >= MIN_POSTAL_TYPO_LENGTH
        and OSA.distance(x, y, score_cutoff=POSTAL_TYPO_EDITS) <= POSTAL_TYPO_EDITS
    )


def similar_cities(x: str, y: str) -> bool:
    """The same city, maybe misspelt ("wollongong" / "wolllngong")."""
    return bool(x) and bool(y) and (x == y or JaroWinkler.similarity(x, y) >= JW_HIGH)


class AddressComparison(Comparison):
    name = "address"
    levels = ("exact", "same-street-and-postal", "postal-code", "city", "else")
    default_m = (0.65, 0.1, 0.05, 0.05, 0.15)
    default_u = (0.00005, 0.0001, 0.003, 0.05, 0.94685)

    def compare(self, a: MatchFeatures, b: MatchFeatures, names: NamePair | None) -> int | None:
        """Exact line in the same postal code or city; a similar line in the same (or a
        one-typo) postal code or the same city; the same postal code (or one typo apart in
        the same city); the same city (maybe misspelt)."""
        if not a.addresses or not b.addresses:
            return None
        best = 4
        # Each test is made only when the ones before leave the level open: the same
        # postal code needs no city, a similar city no second look at the postal code
        # unless the line differs, and most pairs (three in five) share neither.
        for line_a, postal_a, city_a in a.addresses:
            for line_b, postal_b, city_b in b.addresses:
                if postal_a and postal_a == postal_b:
                    if line_a and line_a == line_b:
                        return 0
                    best = min(best, 1 if similar_lines(line_a, line_b) else 2)
                elif similar_cities(city_a, city_b):
                    if line_a and line_a == line_b:
                        return 0
                    if similar_lines(line_a, line_b):
                        best = min(best, 1)
                    elif near_postal(postal_a, postal_b):
                        best = min(best, 2)
                    else:
                        best = min(best, 3)
                elif near_postal(postal_a, postal_b) and similar_lines(line_a, line_b):
                    best = min(best, 1)
        return best


COMPARISONS: tuple[Comparison, ...] = (
    GivenNameComparison(),
    FamilyNameComparison(),
    BirthDateComparison(),
    GenderComparison(),
    PhoneComparison(),
    EmailComparison(),
    SsnComparison(),
    IdentifierComparison(),
    AddressComparison(),
)

#: The bound ``compare`` of each comparison (one attribute lookup less per comparison of
#: the ~10 us a pair costs).
_COMPARE = tuple(c.compare for c in COMPARISONS)


def compare_records(a: MatchFeatures, b: MatchFeatures) -> tuple[list[int | None], NamePair | None]:
    """The level of every comparison in :data:`COMPARISONS`, and the names compared."""
    names = align_names(a, b)
    return [compare(a, b, names) for compare in _COMPARE], names
