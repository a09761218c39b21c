"""build_golden plans its rankings once per rules mapping: a mapping changed in place
(its tuples replaced, or its lists edited) ranks by its new rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhir_mapping import parse_patient
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
