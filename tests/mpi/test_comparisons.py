"""Each comparison grades agreement at the level a person would expect."""

from __future__ import annotations

import pytest

from mpi.comparisons import (
    AddressComparison,
    BirthDateComparison,
    EmailComparison,
    FamilyNameComparison,
    GenderComparison,
    GivenNameComparison,
    IdentifierComparison,
    PhoneComparison,
    SsnComparison,
    align_names,
)
from tests.mpi.helpers import features

GIVEN = GivenNameComparison()
FAMILY = FamilyNameComparison()


def _given(a: dict, b: dict) -> str | None:
    fa, fb = features(**a), features(**b)
    level = GIVEN.compare(fa, fb, align_names(fa, fb))
    return None if level is None else GIVEN.levels[level]


def _family(a: dict, b: dict) -> str | None:
    fa, fb = features(**a), features(**b)
    level = FAMILY.compare(fa, fb, align_names(fa, fb))
    return None if level is None else FAMILY.levels[level]


@pytest.mark.parametrize(
    ("left", "right", "level"),
    [
        ("Robert", "Robert", "exact"),
        ("Robert", "ROBERT", "exact"),
        ("Robert", "Bob", "nickname"),
        ("Jonathan", "Jonahtan", "jaro-winkler-0.92"),
        (["Thi", "Huong"], ["Thi", "Huogn"], "jaro-winkler-0.92"),
        (["Thi", "Lan"], ["Thi", "Hoa"], "token-overlap"),
        ("Robert", "Mildred", "else"),
    ],
)
def test_given_name_levels(left: object, right: object, level: str) -> None:
    assert _given({"given": left}, {"given": right}) == level


def test_given_name_missing_contributes_nothing() -> None:
    assert _given({"given": None}, {"given": "Robert"}) is None


@pytest.mark.parametrize(
    ("left", "right", "level"),
    [
        ("Müller", "Mueller", "exact"),
        ("Müller", "Muller", "exact"),
        ("Oyelaran-Whitfield", "Oyelaran Whitfield", "exact"),
        ("Hutchinson", "Hutchinsen", "jaro-winkler-0.92"),
        ("Castellanos-Reyes", "Reyes", "token-overlap"),
        ("Smith", "Nguyen", "else"),
    ],
)
def test_family_name_levels(left: str, right: str, level: str) -> None:
    assert _family({"family": left}, {"family": right}) == level


def test_given_and_family_swapped() -> None:
    a = {"given": "Oyelaran", "family": "Temitope"}
    b = {"given": "Temitope", "family": "Oyelaran"}
    assert _family(a, b) == "given-family-swapped"
    assert _given(a, b) == "exact"


@pytest.mark.parametrize(
    ("left", "right", "level"),
    [
        ("1970-03-14", "1970-03-14", "exact"),
        ("1970-03-04", "1970-04-03", "day-month-transposed"),
        ("1970-03-14", "1970-03-15", "one-digit-off"),
        ("1970-03-14", "1970-11-30", "same-year"),
        ("1970-03-14", "1982-06-01", "else"),
    ],
)
def test_birth_date_levels(left: str, right: str, level: str) -> None:
    comparison = BirthDateComparison()
    got = comparison.compare(features(birth=left), features(birth=right), None)
    assert got is not None and comparison.levels[got] == level


def test_gender_phone_email_levels() -> None:
    a, b = features(gender="male"), features(gender="female", phone="415.867.5309")
    assert GenderComparison().compare(a, b, None) == 1
    assert PhoneComparison().compare(a, b, None) == 0  # same number, other formatting
    c = features(email="Bob@Example.com")
    d = features(email="bob@example.com")
    assert EmailComparison().compare(c, d, None) == 0
    assert EmailComparison().compare(c, features(email=None), None) is None


def test_ssn_levels() -> None:
    comparison = SsnComparison()
    a = features(ssn="512-34-6789")
    assert comparison.compare(a, features(ssn="512346789"), None) == 0
    assert comparison.compare(a, features(ssn="512-34-6798"), None) == 1  # transposed digits
    assert comparison.compare(a, features(ssn="234-56-7891"), None) == 2
    assert comparison.compare(a, features(), None) is None


def test_identifier_compared_within_one_system_only() -> None:
    comparison = IdentifierComparison()
    a = features(passport="X1234567")
    assert comparison.compare(a, features(passport="X1234567"), None) == 0
    assert comparison.compare(a, features(passport="X1234568"), None) == 1
    assert comparison.compare(a, features(passport="Y9999999"), None) == 2
    assert comparison.compare(a, features(), None) is None


def test_address_levels() -> None:
    comparison = AddressComparison()
    home = features(line="12 Main Street", postal="94612")
    assert comparison.compare(home, features(line="12 Main St", postal="94612"), None) == 0
    assert comparison.compare(home, features(line="12 Main St Apt 4", postal="94612"), None) == 1
    assert comparison.compare(home, features(line="99 Oak Ave", postal="94612"), None) == 2
    moved = features(line="5 Elm St", postal="02110", city="Boston")
    assert comparison.levels[comparison.compare(home, moved, None) or 0] == "else"


def test_address_line_with_a_slipped_space_or_a_typo_is_the_same_street() -> None:
    comparison = AddressComparison()
    home = features(line="67 Jarrahdale Street Yaldara", postal="2097", city="Empire Bay")
    slipped = features(line="67 Jarrahdale St Yalda Ra", postal="2097", city="Empire Bay")
    assert comparison.compare(home, slipped, None) == 1
    farm = features(line="6 Weddin Circuit Hillside Farm", postal="4152")
    assert (
        comparison.compare(
            farm, features(line="6 Weddin Circuit Hillsidrfarm", postal="4152"), None
        )
        == 1
    )
    assert comparison.compare(farm, features(line="3 Laker Crescent", postal="4152"), None) == 2


def test_postal_code_one_typo_apart_in_the_same_city() -> None:
    comparison = AddressComparison()
    home = features(line="12 Main St", postal="94612", city="Oakland")
    # A transposed digit: the similar line still counts, and so does the city.
    assert comparison.compare(home, features(line="12 Main St", postal="94621"), None) == 0
    other_street = features(line="99 Oak Ave", postal="94621", city="Oakland")
    assert comparison.levels[comparison.compare(home, other_street, None) or 0] == "postal-code"
    elsewhere = features(line="99 Oak Ave", postal="94621", city="Berkeley")
    assert comparison.levels[comparison.compare(home, elsewhere, None) or 0] == "else"


def test_misspelt_city() -> None:
    comparison = AddressComparison()
    a = features(line="1 Wyola Pl", postal="2210", city="West Wollongong")
    b = features(line="8 Other St", postal="2999", city="West Wolllngong")
    assert comparison.levels[comparison.compare(a, b, None) or 0] == "city"
