"""Search tokens of a Patient and search values from URLs meet in one normalized form."""

from __future__ import annotations

import pytest

from fhir_mapping import normalize_search_value, search_tokens

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "O'Brien-Müller", "given": ["Siobhán"], "text": "Siobhán O'Brien-Müller"}],
    "identifier": [{"system": "urn:oid:1.2.3", "value": " MRN-7 "}],
    "telecom": [
        {"system": "phone", "value": "+1 (415) 555-0123"},
        {"system": "email", "value": "Siobhan@Example.org"},
    ],
    "address": [
        {
            "postalCode": "sw1a 1aa",
            "line": ["Flat 2", None, "10 Downing St."],
            "district": "Westminster",
            "text": "Flat 2, 10 Downing St., London",
        }
    ],
}


@pytest.mark.parametrize(
    ("param", "typed"),
    [
        ("family", "O'Brien-Müller"),
        ("family", "obrien muller"),
        ("name", "OBRIEN"),
        ("name", "Muller"),
        ("given", "Siobhan"),
        ("phone", "415-555-0123"),
        ("email", "SIOBHAN@example.org"),
        ("address-postalcode", "SW1A1AA"),
        ("address", "flat 2"),
        ("address", "10 DOWNING ST"),
        ("address", "westminster"),
        ("address", "Flat 2, 10 Downing St., London"),
    ],
)
def test_what_a_user_types_finds_the_indexed_value(param: str, typed: str) -> None:
    tokens = {(p, v) for p, _, v in search_tokens(PATIENT)}
    assert (param, normalize_search_value(param, typed)) in tokens


def test_identifier_token_keeps_its_system() -> None:
    assert ("identifier", "urn:oid:1.2.3", "MRN-7") in search_tokens(PATIENT)


def test_address_tokens_are_the_parts_without_a_parameter_of_their_own() -> None:
    """``address`` also searches the city, state, country and postal code tokens; its own
    are each line whole (a ``null`` placeholder skipped), the district and the text."""
    assert sorted(v for p, _, v in search_tokens(PATIENT) if p == "address") == [
        "10 downing st",
        "flat 2",
        "flat 2 10 downing st london",
        "westminster",
    ]
