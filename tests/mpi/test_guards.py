"""Each guard vetoes the look-alike it is named for, and only that."""

from __future__ import annotations

from mpi import MatchSettings, guard_reasons
from mpi.comparisons import compare_records
from mpi.guards import LOOKALIKE_REASONS, lookalike_patterns, supported_lookalikes
from tests.mpi.helpers import features

SETTINGS = MatchSettings()


def test_same_person_with_typos_passes_every_guard() -> None:
    a = features(given="Robert", ssn="512-34-6789")
    b = features(given="Bob", family="Oyelaran Whitfield", ssn="512-34-6789", phone=None)
    assert guard_reasons(a, b, SETTINGS) == []


def test_conflicting_ssn() -> None:
    a, b = features(ssn="512-34-6789"), features(ssn="512-34-6790")
    assert "conflicting-ssn" in guard_reasons(a, b, SETTINGS)


def test_conflicting_strong_identifier_of_the_same_system() -> None:
    a, b = features(passport="X1234567"), features(passport="Y7654321")
    assert "conflicting-identifier" in guard_reasons(a, b, SETTINGS)


def test_twins() -> None:
    a = features(given="Jennifer", gender="female")
    b = features(given="Rebecca", gender="female")
    assert "twin" in guard_reasons(a, b, SETTINGS)


def test_twins_found_by_shared_phone_when_the_family_name_changed() -> None:
    a = features(given="Jennifer", family="Kowalski", line=None, postal=None, city=None)
    b = features(given="Rebecca", family="Nowak", line=None, postal=None, city=None)
    assert "twin" in guard_reasons(a, b, SETTINGS)


def test_twins_with_names_that_sound_alike() -> None:
    a, b = features(given="Hassan"), features(given="Hussein")
    assert "twin" in guard_reasons(a, b, SETTINGS)


def test_a_typo_or_an_initial_in_the_given_name_is_no_twin() -> None:
    # Febrl-like registration slips: one letter swapped, dropped or replaced; an initial.
    for typo in ("Rbecca", "Rebeca", "Rebecac", "R"):
        a = features(given="Rebecca", gender="female")
        b = features(given=typo, gender="female")
        assert "twin" not in guard_reasons(a, b, SETTINGS), typo


def test_given_and_family_swapped_is_no_twin() -> None:
    a = features(given="Ryan", family="Joel")
    b = features(given="Joel", family="Ryan")
    assert "twin" not in guard_reasons(a, b, SETTINGS)


def test_twins_sharing_a_middle_name_are_still_twins() -> None:
    # Vietnamese given names "Thi Huong" and "Thi Thu" share a token, not a person.
    a = features(given=["Thi", "Huong"], gender="female")
    b = features(given=["Thi", "Thu"], gender="female")
    assert "twin" in guard_reasons(a, b, SETTINGS)


def test_jr_sr_by_birth_dates_far_apart() -> None:
    father = features(birth="1950-02-01")
    son = features(birth="1978-06-30")
    assert "jr-sr" in guard_reasons(father, son, SETTINGS)
    close = features(birth="1960-02-01")
    assert "jr-sr" not in guard_reasons(father, close, SETTINGS)


def test_jr_sr_when_the_family_name_is_misspelt() -> None:
    father = features(birth="1950-02-01")
    son = features(family="Oyelaran-Whitfeld", birth="1978-06-30")
    assert "jr-sr" in guard_reasons(father, son, SETTINGS)


def test_different_suffixes() -> None:
    assert "different-suffix" in guard_reasons(
        features(suffix="Jr."), features(suffix="Sr"), SETTINGS
    )
    assert guard_reasons(features(suffix="Jr."), features(suffix="JR"), SETTINGS) == []


def test_household_member() -> None:
    husband = features(given="Robert", birth="1970-03-14", gender="male")
    wife = features(given="Maria", family="Lopez", birth="1972-08-09", gender="female")
    assert "household-member" in guard_reasons(husband, wife, SETTINGS)


def test_shared_identifier_overrides_look_alike_guards() -> None:
    # Same SSN: a registration typo in the given name, not a twin.
    a = features(given="Jennifer", ssn="512-34-6789")
    b = features(given="Rebecca", ssn="512-34-6789")
    assert guard_reasons(a, b, SETTINGS) == []


def test_lookalike_guards_can_be_turned_off_but_identifier_conflicts_still_veto() -> None:
    relaxed = MatchSettings(lookalike_guards=False)
    twins = features(given="Jennifer", gender="female"), features(given="Rebecca", gender="female")
    assert guard_reasons(*twins, relaxed) == []
    conflict = features(ssn="512-34-6789"), features(ssn="512-34-6790")
    assert guard_reasons(*conflict, relaxed) == ["conflicting-ssn"]


def test_every_lookalike_guard_applies_unless_the_data_refutes_it() -> None:
    assert supported_lookalikes(None) == LOOKALIKE_REASONS
    assert supported_lookalikes({}) == LOOKALIKE_REASONS
    # Given names differ as often in the twin stratum as among duplicates: no twins here.
    no_twins = {"twin": {"pairs": 3000.0, "observed": 0.10, "duplicates": 0.10}}
    assert supported_lookalikes(no_twins) == {"jr-sr", "household-member"}
    # Far more often than registration errors explain: twins are present.
    twins = {"twin": {"pairs": 3000.0, "observed": 0.07, "duplicates": 0.002}}
    assert supported_lookalikes(twins) == LOOKALIKE_REASONS
    # Too few pairs to tell: the guard stays.
    few = {"twin": {"pairs": 20.0, "observed": 0.0, "duplicates": 0.5}}
    assert supported_lookalikes(few) == LOOKALIKE_REASONS
    # Neither families pattern present: the household guard goes too.
    none = {**no_twins, "jr-sr": {"pairs": 2000.0, "observed": 0.04, "duplicates": 0.05}}
    assert supported_lookalikes(none) == frozenset()


def test_an_unsupported_lookalike_guard_does_not_veto_but_conflicts_still_do() -> None:
    a = features(given="Jennifer", gender="female", ssn="512-34-6789")
    b = features(given="Rebecca", gender="female", ssn="512-34-6790")
    assert guard_reasons(a, b, SETTINGS) == ["conflicting-ssn", "twin"]
    assert guard_reasons(a, b, SETTINGS, lookalikes=frozenset()) == ["conflicting-ssn"]
    only_jr = frozenset({"jr-sr"})
    assert "twin" not in guard_reasons(a, b, SETTINGS, lookalikes=only_jr)


def test_lookalike_patterns_name_the_stratum_and_the_pattern() -> None:
    twin_a, twin_b = features(given="Jennifer"), features(given="Rebecca")
    levels, names = compare_records(twin_a, twin_b)
    assert lookalike_patterns(twin_a, twin_b, SETTINGS, levels, names) == {"twin": True}
    father, son = features(birth="1950-02-01"), features(birth="1978-06-30")
    levels, names = compare_records(father, son)
    assert lookalike_patterns(father, son, SETTINGS, levels, names) == {"jr-sr": True}
    same = features()
    levels, names = compare_records(same, same)
    assert lookalike_patterns(same, same, SETTINGS, levels, names) == {
        "twin": False,
        "jr-sr": False,
    }


def test_a_one_keystroke_ssn_typo_with_everything_else_matching_is_no_conflict() -> None:
    a = features(ssn="512-34-6789")
    for typo in ("512-34-6798", "512-34-6780", "512-43-6789"):  # swapped, replaced digits
        assert guard_reasons(a, features(ssn=typo), SETTINGS) == [], typo
    # A nickname and a misspelt family name still say "same person".
    b = features(given="Bob", family="Oyelaran-Whitfeld", ssn="512-34-6798")
    assert guard_reasons(a, b, SETTINGS) == []


def test_sequential_ssns_with_different_given_names_stay_vetoed() -> None:
    # Twins' SSNs are often issued in sequence: one keystroke apart, two people.
    a = features(given="Jennifer", gender="female", ssn="512-34-6788")
    b = features(given="Rebecca", gender="female", ssn="512-34-6789")
    assert guard_reasons(a, b, SETTINGS) == ["conflicting-ssn", "twin"]


def test_a_near_identical_ssn_does_not_excuse_a_different_birth_date() -> None:
    father = features(birth="1950-02-01", ssn="512-34-6789")
    son = features(birth="1978-06-30", ssn="512-34-6798")
    assert "conflicting-ssn" in guard_reasons(father, son, SETTINGS)


def test_a_strong_identifier_typo_follows_the_same_rule() -> None:
    a = features(passport="X1234567")
    assert guard_reasons(a, features(passport="X1234576"), SETTINGS) == []
    twin = features(given="Rebecca", passport="X1234568")
    assert "conflicting-identifier" in guard_reasons(a, twin, SETTINGS)


def test_a_mistyped_nickname_is_no_twin() -> None:
    a = features(given="Deborah", gender="female")
    b = features(given="Debbei", gender="female")  # "Debbie" with two letters swapped
    assert "twin" not in guard_reasons(a, b, SETTINGS)
    assert "twin" in guard_reasons(a, features(given="Rebecca", gender="female"), SETTINGS)
