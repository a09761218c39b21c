"""The shortcuts of the deciding path give exactly what the plain code they replaced gives.

Each ``_reference_*`` below is the code as it was before its shortcut (set intersections
instead of ``isdisjoint``, every address test made for every pair, one ``Counter.update``
per block, a sort on tuples, the key text built by a generator). They are compared with
the shipped code over the pairs that blocking finds in generated EHR data, random pairs,
and pairs whose addresses are recombined from near-identical parts (same or mistyped
postal codes and cities, equal, similar and different lines), so every branch is met.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import replace
from itertools import combinations

import pytest

from fhir_mapping import parse_patient
from mpi import MatchFeatures, extract_features
from mpi.blocking import KEY_DIGEST_BYTES, MemoryBlockIndex, _hash, block_keys
from mpi.comparisons import (
    COMPARISONS,
    AddressComparison,
    NamePair,
    _is_swapped,
    _multi_token_similarity,
    _name_affinity,
    align_names,
    compare_records,
    near_postal,
    similar_cities,
    similar_lines,
)
from mpi.model import MatchModel
from mpi.train import term_frequencies
from tools.ehrgen import generate

JW_HIGH, JW_LOW = 0.92, 0.80


def _reference_given(names: NamePair | None) -> int | None:
    from rapidfuzz.distance import JaroWinkler

    if names is None or not names.a.given_first or not names.b.given_first:
        return None
    x, y = names.a, names.b
    if x.given.replace(" ", "") == y.given.replace(" ", ""):
        return 0
    single = len(x.given_tokens) == 1 or len(y.given_tokens) == 1
    if single and x.given_first == y.given_first:
        return 0
    if single and x.given_keys & y.given_keys:
        return 1
    if single:
        similarity = JaroWinkler.similarity(x.given_first, y.given_first)
    else:
        similarity = _multi_token_similarity(x.given.split(), y.given.split())
    if similarity >= JW_HIGH:
        return 2
    if single and x.given_phonetic and x.given_phonetic == y.given_phonetic:
        return 3
    if x.given_tokens & y.given_tokens:
        return 4
    if similarity >= JW_LOW:
        return 5
    return 6


def _reference_family(names: NamePair | None) -> int | None:
    from rapidfuzz.distance import JaroWinkler

    if names is None or not names.a.family or not names.b.family:
        return None
    x, y = names.a, names.b
    if names.swapped:
        return 4
    if x.family_variants & y.family_variants:
        return 0
    similarity = JaroWinkler.similarity(x.family, y.family)
    if similarity >= JW_HIGH:
        return 1
    if x.family_phonetic and x.family_phonetic == y.family_phonetic:
        return 2
    if len(x.family_tokens | y.family_tokens) > 1 and x.family_tokens & y.family_tokens:
        return 3
    if similarity >= JW_LOW:
        return 5
    return 6


def _reference_birth_date(a: MatchFeatures, b: MatchFeatures) -> int | None:
    from rapidfuzz.distance import Hamming

    if a.birth_date and b.birth_date:
        if a.birth_date == b.birth_date:
            return 0
        if (
            a.birth_year == b.birth_year
            and a.birth_month == b.birth_day
            and a.birth_day == b.birth_month
        ):
            return 1
        x, y = a.birth_date, b.birth_date
        if len(x) == len(y) and Hamming.distance(x, y, score_cutoff=1) == 1:
            return 2
    if a.birth_year is None or b.birth_year is None:
        return None
    return 3 if a.birth_year == b.birth_year else 4


def _reference_set(x: frozenset[str], y: frozenset[str]) -> int | None:
    if not x or not y:
        return None
    return 0 if x & y else 1


def _reference_ssn(a: MatchFeatures, b: MatchFeatures) -> int | None:
    from rapidfuzz.distance import OSA

    if not a.ssns or not b.ssns:
        return None
    if a.ssns & b.ssns:
        return 0
    return 1 if any(OSA.distance(x, y, score_cutoff=1) <= 1 for x in a.ssns for y in b.ssns) else 2


def _reference_identifier(a: MatchFeatures, b: MatchFeatures) -> int | None:
    from rapidfuzz.distance import OSA

    x, y = a.strong_ids | a.other_ids, b.strong_ids | b.other_ids
    if not x or not y:
        return None
    if x & y:
        return 0
    shared = typo = False
    for system_a, value_a in x:
        for system_b, value_b in y:
            if system_a == system_b:
                shared = True
                typo = typo or OSA.distance(value_a, value_b, score_cutoff=1) <= 1
    if not shared:
        return None
    return 1 if typo else 2


def _reference_address(a: MatchFeatures, b: MatchFeatures) -> int | None:
    if not a.addresses or not b.addresses:
        return None
    best = 4
    for line_a, postal_a, city_a in a.addresses:
        for line_b, postal_b, city_b in b.addresses:
            same_postal = bool(postal_a) and postal_a == postal_b
            same_city = similar_cities(city_a, city_b)
            close_postal = near_postal(postal_a, postal_b)
            if not (same_postal or same_city or close_postal):
                continue
            if line_a and line_a == line_b and (same_postal or same_city):
                return 0
            if similar_lines(line_a, line_b):
                best = min(best, 1)
            elif same_postal or (close_postal and same_city):
                best = min(best, 2)
            elif same_city:
                best = min(best, 3)
    return best


def _reference_names(a: MatchFeatures, b: MatchFeatures) -> tuple[object, ...] | None:
    """align_names with set intersections, as (given, family, swapped) of the pair."""
    from mpi.comparisons import _flip

    if len(a.names) == 1 and len(b.names) == 1:
        na, nb = a.names[0], b.names[0]
        if na.family_variants & nb.family_variants or not _is_swapped(na, nb):
            return (na, nb, False)
        flipped = _flip(nb)
        if _name_affinity(na, flipped) > _name_affinity(na, nb):
            return (na, flipped, True)
        return (na, nb, False)
    best = None
    best_affinity = -1.0
    for na in a.names:
        for nb in b.names:
            affinity = _name_affinity(na, nb)
            if affinity > best_affinity:
                best, best_affinity = (na, nb, False), affinity
            if affinity < 1.0 + JW_HIGH and _is_swapped(na, nb):
                flipped = _flip(nb)
                swapped_affinity = _name_affinity(na, flipped)
                if swapped_affinity > best_affinity:
                    best, best_affinity = (na, flipped, True), swapped_affinity
    return best


def _reference_levels(a: MatchFeatures, b: MatchFeatures) -> list[int | None]:
    names = align_names(a, b)
    by_name = {c.name: c for c in COMPARISONS}
    return [
        _reference_given(names),
        _reference_family(names),
        _reference_birth_date(a, b),
        by_name["gender"].compare(a, b, names),
        _reference_set(a.phones, b.phones),
        _reference_set(a.emails, b.emails),
        _reference_ssn(a, b),
        _reference_identifier(a, b),
        _reference_address(a, b),
    ]


def _reference_score(model: MatchModel, a: MatchFeatures, b: MatchFeatures) -> float:
    levels, names = compare_records(a, b)
    total = 0.0
    for comparison, level in zip(COMPARISONS, levels, strict=True):
        if level is None:
            continue
        tf = comparison.tf_value(names) if level == 0 and comparison.term_frequency else None
        total += model.level_weight(comparison.name, level, tf)
    return total


def _reference_hash(kind: str, *parts: object) -> str:
    text = "\x1f".join(str(p) for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=KEY_DIGEST_BYTES).hexdigest()
    return f"{kind}:{digest}"


def _reference_candidates(index: MemoryBlockIndex, keys: list[str], limit: int | None) -> list[int]:
    shared: Counter[int] = Counter()
    for key in keys:
        members = index.members.get(key)
        if not members or len(members) > index.max_block_size:
            continue
        shared.update(members)
    ranked = sorted([(-count, record) for record, count in shared.items()])
    return [record for _, record in ranked[:limit]]


@pytest.fixture(scope="module")
def records() -> list[MatchFeatures]:
    generated = generate(600, seed=20261122)
    return [
        extract_features(parse_patient(resource))
        for resources in generated.patients_by_source.values()
        for resource in resources
    ]


def _pairs(records: list[MatchFeatures]) -> list[tuple[MatchFeatures, MatchFeatures]]:
    """Every pair sharing a block key (what is scored), and as many random pairs."""
    by_key: dict[str, list[int]] = {}
    for i, f in enumerate(records):
        for key in block_keys(f):
            by_key.setdefault(key, []).append(i)
    blocked = {p for members in by_key.values() for p in combinations(members, 2)}
    rng = random.Random(7)
    randoms = {tuple(rng.sample(range(len(records)), 2)) for _ in range(len(blocked))}
    return [(records[i], records[j]) for i, j in sorted(blocked | randoms)]


def test_comparison_levels_and_names_equal_the_plain_code(
    records: list[MatchFeatures],
) -> None:
    pairs = _pairs(records)
    assert len(pairs) > 2000
    seen: list[Counter[int | None]] = [Counter() for _ in COMPARISONS]
    for a, b in pairs:
        for x, y in ((a, b), (b, a)):
            levels, names = compare_records(x, y)
            assert levels == _reference_levels(x, y)
            assert names is not None
            assert (names.a, names.b, names.swapped) == _reference_names(x, y)
            for counter, level in zip(seen, levels, strict=True):
                counter[level] += 1
    # The data reaches the levels the shortcuts decide (exact, else, missing).
    by_name = dict(zip([c.name for c in COMPARISONS], seen, strict=True))
    assert {0, 4, 6} <= set(by_name["given"]) and {0, 6} <= set(by_name["family"])
    assert {0, 1, None} <= set(by_name["phone"]) and {0, 2, None} <= set(by_name["identifier"])


def test_address_level_equals_the_plain_code_on_recombined_addresses(
    records: list[MatchFeatures],
) -> None:
    """Lines, postal codes and cities drawn from small pools of near variants, one or two
    addresses a side: every combination of same, mistyped and different parts."""
    lines = [
        "12 main st",
        "12 main street",
        "12 mian st",
        "12mainst",
        "40 oak ave",
        "",
        "12 main st apt 4",
    ]
    postals = ["94612", "94621", "94613", "9461", "10001", ""]
    cities = ["oakland", "oaklnad", "berkeley", "", "wollongong", "wolllngong"]
    rng = random.Random(11)
    base = records[0]
    levels: Counter[int | None] = Counter()
    comparison = AddressComparison()
    for _ in range(6000):
        sides = [
            replace(
                base,
                addresses=tuple(
                    (rng.choice(lines), rng.choice(postals), rng.choice(cities))
                    for _ in range(rng.choice((0, 1, 1, 1, 2)))
                ),
            )
            for _ in range(2)
        ]
        level = comparison.compare(sides[0], sides[1], None)
        assert level == _reference_address(sides[0], sides[1])
        levels[level] += 1
    assert set(levels) == {0, 1, 2, 3, 4, None}


def _birth(date: str | None, year: int | None) -> dict[str, object]:
    if date is None:
        return {"birth_date": None, "birth_year": year, "birth_month": None, "birth_day": None}
    return {
        "birth_date": date,
        "birth_year": int(date[:4]),
        "birth_month": int(date[4:6]),
        "birth_day": int(date[6:]),
    }


def test_birth_date_level_equals_the_plain_code_on_near_dates(
    records: list[MatchFeatures],
) -> None:
    """Dates one or two digits (in one or several of year, month and day) apart, day and
    month swapped, and partial dates (a year only)."""
    rng = random.Random(5)
    comparison = next(c for c in COMPARISONS if c.name == "birth_date")
    levels: Counter[int | None] = Counter()
    for _ in range(20000):
        date = f"{rng.randint(1900, 2025):04d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        other = list(date)
        for _ in range(rng.choice((0, 1, 1, 2))):
            other[rng.randrange(8)] = str(rng.randint(0, 9))
        variants = ["".join(other), date[:4] + date[6:] + date[4:6]]
        second = rng.choice(variants)
        if not (1 <= int(second[4:6]) <= 12 and 1 <= int(second[6:]) <= 31):
            continue
        sides = [
            replace(records[0], **_birth(d, int(d[:4]) if d else None))  # type: ignore[arg-type]
            for d in (date, second)
        ]
        if rng.random() < 0.05:
            sides[1] = replace(sides[1], **_birth(None, rng.choice((None, int(date[:4])))))  # type: ignore[arg-type]
        level = comparison.compare(sides[0], sides[1], None)
        assert level == _reference_birth_date(sides[0], sides[1])
        levels[level] += 1
    assert set(levels) == {0, 1, 2, 3, 4, None}


def test_scores_equal_the_plain_code_with_and_without_term_frequencies(
    records: list[MatchFeatures],
) -> None:
    tf, default_tf = term_frequencies(records)
    models = [
        MatchModel.default(),
        MatchModel(term_frequencies=tf, default_term_frequency=default_tf),
    ]
    for model in models:
        for a, b in _pairs(records)[:3000]:
            score = model.score(a, b)
            assert score.total == _reference_score(model, a, b)
            assert sum(score.contributions.values()) == pytest.approx(score.total)


def test_block_keys_are_the_stored_encoding() -> None:
    """The keys are stored: the same kinds and parts must give the same strings."""
    for parts in [("fy", "SMT", 1970), ("gd", "robert", "19700314"), ("id", "ssn", "123")]:
        assert _hash(*parts) == _reference_hash(*parts)
    assert (
        _hash("fy", "SMT", 1970)
        == "fy:" + hashlib.blake2b(b"SMT\x1f1970", digest_size=KEY_DIGEST_BYTES).hexdigest()
    )


def test_candidate_ranking_equals_the_plain_code() -> None:
    rng = random.Random(3)
    for _ in range(300):
        index = MemoryBlockIndex(rng.randint(1, 30))
        kinds = rng.randint(1, 40)
        for record in range(rng.randint(0, 300)):
            record_id = rng.randint(-5, 10**6) if rng.random() < 0.1 else record
            index.add(record_id, [f"k{rng.randint(0, kinds)}" for _ in range(rng.randint(0, 8))])
        for _ in range(20):
            keys = [f"k{rng.randint(0, kinds + 3)}" for _ in range(rng.randint(0, 12))]
            limit = rng.choice([None, 0, 1, 3, 8, 100])
            assert index.candidates(keys, limit) == _reference_candidates(index, keys, limit)
