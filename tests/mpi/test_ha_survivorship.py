"""build_golden plans its rankings once per rules mapping: a mapping changed in place
(its tuples replaced, or its lists edited) ranks by its new rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_mapping import GoldenLink, parse_patient
from mpi.survivorship import MemberRecord, build_golden
from tests.mpi.helpers import fhir_patient


def _members() -> list[MemberRecord]:
    """The trusted record is the older one: trust and recency choose different genders."""
    trusted = parse_patient(fhir_patient("t", gender="female"))
    recent = parse_patient(fhir_patient("r", gender="male"))
    return [
        MemberRecord(1, trusted, 90, datetime(2020, 1, 1, tzinfo=UTC)),
        MemberRecord(2, recent, 10, datetime(2024, 1, 1, tzinfo=UTC)),
    ]


def _gender(rules: Any) -> tuple[str | None, str]:
    golden, provenance = build_golden("g", _members(), rules)
    [entry] = [p for p in provenance if p.field == "gender"]
    return golden.gender, entry.rule


def test_rules_changed_in_place_rank_anew() -> None:
    rules: dict[str, tuple[str, ...]] = {"gender": ("trust",)}
    assert _gender(rules) == ("female", "trust")
    rules["gender"] = ("recency",)
    assert _gender(rules) == ("male", "recency")
    rules["gender"] = ("bogus",)  # ranks nothing: the older record
    assert _gender(rules) == ("female", "bogus")


def test_rules_held_in_lists_rank_by_their_current_content() -> None:
    rules: dict[str, list[str]] = {"gender": ["recency"]}
    assert _gender(rules) == ("male", "recency")
    rules["gender"][0] = "trust"
    assert _gender(rules) == ("female", "trust")


def test_a_lone_member_builds_what_the_ranked_path_builds() -> None:
    """The one-member path (no ranking) against the ranked path given the same lone
    member: the same record and provenance, whose lists are the golden record's own."""
    from mpi.survivorship import _build_ranked, _rankings
    from tests.mpi.test_hc_survivorship import _people

    start = datetime(2024, 1, 1, tzinfo=UTC)
    checked = 0
    for seed in (5, 11):
        for person in _people(seed):
            for i, patient in enumerate(person):
                member = MemberRecord(100 + i, patient, 50, start if i % 2 else None)
                links = [GoldenLink("other", "replaces")] if i % 3 == 0 else []
                golden, provenance = build_golden("g", [member], {}, links=links)
                expected = _build_ranked("g", _rankings([member], {}), links)
                assert (golden, provenance) == expected
                for mine, theirs in (
                    (golden.names, patient.names),
                    (golden.identifiers, patient.identifiers),
                    (golden.telecom, patient.telecom),
                    (golden.addresses, patient.addresses),
                    (golden.languages, patient.languages),
                ):
                    assert mine is not theirs
                checked += 1
    assert checked > 200
