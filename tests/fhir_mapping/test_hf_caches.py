"""The caches of whole phone numbers, address lines and names: they reach across
sources (a person's values come again after a whole source of other people) and stay
bounded whatever the load's size."""

from __future__ import annotations

from typing import Any

from fhir_mapping import parse_patient
from fhir_mapping.contact import (
    CONTACT_CACHE_SIZE,
    CROSS_SOURCE_CACHE_SIZE,
    _lines_normalized,
    normalize_phone,
)
from fhir_mapping.names import NAME_FEATURES_CACHE_SIZE, _name_features

#: More people than the small caches hold, fewer than the cross-source ones.
SOURCE_PEOPLE = CONTACT_CACHE_SIZE + 1000
CACHES = (normalize_phone, _lines_normalized, _name_features)


def _patient(i: int, source: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"{source}-{i}",
        "name": [{"family": f"Family{i}", "given": [f"Given{i}"]}],
        "telecom": [{"system": "phone", "value": f"(415) {200 + i // 10000}-{i % 10000:04d}"}],
        "address": [{"line": [f"{i} Main Street"], "city": "Springfield"}],
    }


def _hits() -> list[int]:
    return [cache.cache_info().hits for cache in CACHES]


def test_a_person_seen_a_source_ago_is_still_cached_with_the_same_record() -> None:
    for cache in CACHES:
        cache.cache_clear()
    first = [parse_patient(_patient(i, "a")) for i in range(SOURCE_PEOPLE)]
    before = _hits()
    again = parse_patient(_patient(0, "b"))
    assert [after - was for after, was in zip(_hits(), before, strict=True)] == [1, 1, 1]
    assert again.names == first[0].names
    assert again.telecom == first[0].telecom
    assert again.addresses == first[0].addresses
    assert again.names[0].given_folded is not first[0].names[0].given_folded


def test_the_caches_stay_bounded() -> None:
    assert CROSS_SOURCE_CACHE_SIZE == NAME_FEATURES_CACHE_SIZE
    for i in range(CROSS_SOURCE_CACHE_SIZE + 100):
        normalize_phone(f"(415) {200 + i // 10000}-{i % 10000:04d}")
        _lines_normalized((f"{i} Elm Road",))
        _name_features(f"Family{i}", (f"Given{i}",), None, ())
    for cache in CACHES:
        info = cache.cache_info()
        assert info.maxsize == CROSS_SOURCE_CACHE_SIZE
        assert info.currsize == CROSS_SOURCE_CACHE_SIZE
