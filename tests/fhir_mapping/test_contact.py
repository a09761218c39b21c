"""Table tests of telecom and address normalization."""

from __future__ import annotations

import pytest

from fhir_mapping import (
    normalize_address,
    normalize_contact_point,
    normalize_email,
    normalize_line,
    normalize_phone,
    normalize_postal_code,
)


@pytest.mark.parametrize(
    ("value", "region", "e164"),
    [
        ("(415) 555-0123", "US", "+14155550123"),
        ("415.555.0123", "US", "+14155550123"),
        ("1-415-555-0123", "US", "+14155550123"),
        ("+1-555-139-4411", "US", "+15551394411"),  # sekmet's fictional numbers are kept
        ("tel:+1-469-555-5555", "US", "+14695555555"),
        ("8165555555", "US", "+18165555555"),  # Oracle Health: digits only
        ("030 1234567", "DE", "+49301234567"),  # German, national trunk prefix
        ("+49 (0)30 1234567", "US", "+49301234567"),
        ("+370 612 34567", "US", "+37061234567"),  # Lithuanian
        ("0912 345 678", "VN", "+84912345678"),  # Vietnamese mobile
        ("(03) 5555 6473", "AU", "+61355556473"),  # FHIR spec example, Australia
        ("(03) 5555 6473", "US", ""),  # read with the wrong region: not a US number
        ("unknown", "US", ""),
        ("12", "US", ""),
    ],
)
def test_phone_to_e164(value: str, region: str, e164: str) -> None:
    assert normalize_phone(value, region) == e164


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        (" Bob.Mueller@Example.ORG ", "bob.mueller@example.org"),
        ("mailto:Ann@example.com", "ann@example.com"),
        ("not an email", ""),
        ("a@b", ""),
    ],
)
def test_email(value: str, normalized: str) -> None:
    assert normalize_email(value) == normalized


def test_contact_point_keeps_original_use_rank_and_period() -> None:
    point = normalize_contact_point(
        {
            "system": "email",
            "value": "NANCY.SMART@EXAMPLE.COM",
            "use": "home",
            "rank": 2,
            "period": {"start": "2012-05-17"},
        }
    )
    assert (point.value, point.value_normalized) == (
        "NANCY.SMART@EXAMPLE.COM",
        "nancy.smart@example.com",
    )
    assert (point.use, point.rank, point.period.start if point.period else None) == (
        "home",
        2,
        "2012-05-17",
    )


def test_contact_point_uses_the_source_region() -> None:
    point = normalize_contact_point({"system": "phone", "value": "030 1234567"}, "DE")
    assert point.value_normalized == "+49301234567"
    assert normalize_contact_point({"system": "sms", "value": "(415) 555-0123"}).value_normalized


@pytest.mark.parametrize(
    ("line", "normalized"),
    [
        ("16613 North Andrea Street, Apt. 4", "16613 n andrea st apt 4"),
        ("3268 West Johnson St.", "3268 w johnson st"),
        ("100 Main Avenue Suite 200", "100 main ave ste 200"),
        ("1 Sunset Boulevard, Apartment #12", "1 sunset blvd apt 12"),
        ("Hauptstraße 5", "hauptstrasse 5"),
        ("Gedimino pr. 9", "gedimino pr 9"),
    ],
)
def test_address_line(line: str, normalized: str) -> None:
    assert normalize_line(line) == normalized


@pytest.mark.parametrize(
    ("postal", "country", "normalized"),
    [
        ("94105-1234", "US", "94105"),
        ("94105", "USA", "94105"),
        ("941051234", None, "94105"),
        ("sw1a1aa", "United Kingdom", "SW1A 1AA"),
        ("SW1A 1AA", "GB", "SW1A 1AA"),
        ("k1a0b1", "Canada", "K1A 0B1"),
        ("1234 ab", "NL", "1234AB"),
        ("LT-01100", "LT", "LT01100"),
        ("3999", None, "3999"),
    ],
)
def test_postal_code_per_country(postal: str, country: str | None, normalized: str) -> None:
    assert normalize_postal_code(postal, country) == normalized


def test_address_keeps_every_field_and_adds_match_features() -> None:
    raw = {
        "use": "old",
        "type": "physical",
        "line": ["3268 West Johnson St.", "Apt 117"],
        "city": "GARLAND",
        "district": "DALLAS",
        "state": "TX",
        "postalCode": "75043-0001",
        "country": "US",
        "period": {"start": "2019-05-24", "end": "2020-06-30"},
    }
    address = normalize_address(raw)
    assert (address.use, address.line, address.state, address.postal_code) == (
        "old",
        raw["line"],
        "TX",
        "75043-0001",
    )
    assert address.line_normalized == "3268 w johnson st apt 117"
    assert (address.city_folded, address.postal_normalized) == ("garland", "75043")
    assert address.period is not None and address.period.end == "2020-06-30"
