"""Identifier classification, normalization and SSN validity."""

from __future__ import annotations

import pytest

from fhir_mapping import classify_identifier, normalize_identifier, ssn_is_valid

V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def typed(code: str, system: str = "https://ehr.example.org/ids", value: str = "A-1") -> dict:
    return {"type": {"coding": [{"system": V2, "code": code}]}, "system": system, "value": value}


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ({"system": "http://hl7.org/fhir/sid/us-ssn", "value": "123-45-6780"}, "ssn"),
        ({"system": "urn:oid:2.16.840.1.113883.4.1", "value": "123456780"}, "ssn"),
        ({"system": "urn:oid:2.16.840.1.113883.4.3.25", "value": "S999"}, "drivers-license"),
        ({"system": "http://hl7.org/fhir/sid/passport-DEU", "value": "C01X00T47"}, "passport"),
        ({"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "943 476 5919"}, "national-id"),
        ({"system": "http://fhir.de/sid/gkv/kvid-10", "value": "A123456780"}, "member-id"),
        ({"system": "http://hl7.org/fhir/sid/us-mbi", "value": "1EG4-TE5-MK73"}, "member-id"),
        (typed("MR"), "mrn"),
        (typed("DL"), "drivers-license"),
        (typed("MB"), "member-id"),
        (typed("PPN"), "passport"),
        (typed("NI"), "national-id"),
        ({"type": {"text": "MRN"}, "system": "urn:oid:9.9", "value": "1"}, "mrn"),
        ({"type": {"text": "Social Security Number"}, "value": "123456780"}, "ssn"),
        ({"system": "https://ehr.example.org/visit", "value": "v1"}, "other"),
    ],
)
def test_identifier_kind(raw: dict, kind: str) -> None:
    assert normalize_identifier(raw).kind == kind


def test_only_the_sources_mrn_system_is_its_mrn() -> None:
    epic_mrn = "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14"
    assert classify_identifier(epic_mrn, None, "EPI", mrn_system=epic_mrn) == "mrn"
    assert classify_identifier("urn:oid:9.9.9", "MR", None, mrn_system=epic_mrn) == "other"
    assert classify_identifier("urn:oid:9.9.9", "MR", None) == "mrn"


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("123456780", True),
        ("000123456", False),  # area 000
        ("666123456", False),  # area 666
        ("900123456", False),  # area 9xx
        ("987654321", False),
        ("123001234", False),  # group 00
        ("123450000", False),  # serial 0000
        ("078051120", False),  # the Woolworth wallet SSN
        ("0001", False),  # Epic's masked "xxx-xx-0001"
        ("12345678", False),
    ],
)
def test_ssn_validity(digits: str, valid: bool) -> None:
    assert ssn_is_valid(digits) is valid


def test_identifier_values_are_normalized_and_flagged() -> None:
    ssn = normalize_identifier({"system": "http://hl7.org/fhir/sid/us-ssn", "value": "666-12-3456"})
    assert (ssn.value, ssn.value_normalized, ssn.valid) == ("666-12-3456", "666123456", False)
    masked = normalize_identifier(
        {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "xxx-xx-0001"}
    )
    assert masked.valid is False
    member = normalize_identifier(typed("MB", value=" mb 778-221 "))
    assert (member.value_normalized, member.type_code, member.valid) == ("MB778221", "MB", True)
    epic_internal = normalize_identifier({"type": {"text": "INTERNAL"}, "value": "     Z6129"})
    assert epic_internal.value_normalized == "Z6129"


def test_identifier_keeps_use_and_period() -> None:
    ident = normalize_identifier(
        {"use": "old", "system": "urn:oid:1.2", "value": "1", "period": {"end": "2020-01-01"}}
    )
    assert ident.use == "old" and ident.period is not None and ident.period.end == "2020-01-01"
