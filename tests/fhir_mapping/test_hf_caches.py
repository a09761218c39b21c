"""The memo caches of whole phone numbers, address lines, names and birth dates: a
value seen recently is a hit with an equal (not shared, where mutable) record, and every
cache stays at its bound whatever the load's size, so the ingest's memory does not grow
with it."""

from __future__ import annotations

from typing import Any

from fhir_mapping import parse_patient
from fhir_mapping import patient as patient_module
from fhir_mapping.contact import CONTACT_CACHE_SIZE, _lines_normalized, normalize_phone
from fhir_mapping.names import NAME_CACHE_SIZE, _name_features

CACHES = (normalize_phone, _lines_normalized, _name_features)
#: Fewer people than the caches hold.
RECENT_PEOPLE = min(CONTACT_CACHE_SIZE, NAME_CACHE_SIZE) // 2


def _patient(i: int, source: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"{source}-{i}",
        "name": [{"family": f"Family{i}", "given": [f"Given{i}"]}],
        "telecom": [{"system": "phone", "value": f"(415) {200 + i // 10000}-{i % 10000:04d}"}],
        "address": [{"line": [f"{i} Main Street"], "city": "Springfield"}],
        "birthDate": f"{1930 + i % 90}-{1 + i % 12:02d}-{1 + i % 28:02d}",
    }


def _hits() -> list[int]:
    return [cache.cache_info().hits for cache in CACHES]


def test_a_person_seen_recently_is_a_hit_with_an_equal_record() -> None:
    for cache in CACHES:
        cache.cache_clear()
    first = [parse_patient(_patient(i, "a")) for i in range(RECENT_PEOPLE)]
    before = _hits()
    again = parse_patient(_patient(0, "b"))
    assert [after - was for after, was in zip(_hits(), before, strict=True)] == [1, 1, 1]
    assert again.names == first[0].names
    assert again.telecom == first[0].telecom
    assert again.addresses == first[0].addresses
    assert again.birth_date == first[0].birth_date
    assert again.names[0].given_folded is not first[0].names[0].given_folded


def test_the_caches_stay_bounded() -> None:
    load = max(CONTACT_CACHE_SIZE, NAME_CACHE_SIZE, patient_module.MAX_CACHED_BIRTH_DATES) + 100
    for i in range(load):
        normalize_phone(f"(415) {200 + i // 10000}-{i % 10000:04d}")
        _lines_normalized((f"{i} Elm Road",))
        _name_features(f"Family{i}", (f"Given{i}",), None, ())
        patient_module._birth_parts(f"{1900 + i // 336}-{1 + i // 28 % 12:02d}-{1 + i % 28:02d}")
    for cache, bound in zip(
        CACHES, (CONTACT_CACHE_SIZE, CONTACT_CACHE_SIZE, NAME_CACHE_SIZE), strict=True
    ):
        info = cache.cache_info()
        assert info.maxsize == bound
        assert info.currsize == bound
    assert 0 < len(patient_module._BIRTH_PARTS) <= patient_module.MAX_CACHED_BIRTH_DATES
