"""Checkers with ``shortcut_first`` (the plans' own): positions whose checker has a
shortcut are decided by it before the memo, and the verdict stays every leaf's own."""

from __future__ import annotations

import random
from typing import Any

from fhir.resources.R4B.humanname import HumanName
from fhir.resources.R4B.patient import Patient

from fhir_mapping import validate as validation
from fhir_mapping.shapes import DEFAULT_MAX_SHAPES, Checkers

BINDINGS = {(Patient, "gender"): validation.GENDERS}

#: Values each shortcut accepts, values only the validator accepts ("1970", " x"),
#: values both refuse, and codes in and out of the gender binding.
VALUES = [
    "1970-03-14",
    "1970",
    "1970-02-30",
    "p-1",
    "bad id!",
    "Smith",
    " x",
    "",
    "   ",
    "male",
    "boy",
    "2001-01-01T10:00:00Z",
]


class _Counting(Checkers):
    def __init__(self, max_verdicts: int, shortcut_first: bool) -> None:
        super().__init__(max_verdicts, BINDINGS, shortcut_first=shortcut_first)
        self.runs: list[tuple[int, Any]] = []

    def _run(self, checker: int, value: Any) -> bool:
        self.runs.append((checker, value))
        return super()._run(checker, value)


def _ids(checkers: Checkers) -> list[int]:
    return [
        checkers.checker(Patient, "birthDate", str),
        checkers.checker(Patient, "id", str),
        checkers.checker(Patient, "gender", str),
        checkers.checker(HumanName, "family", str),
        checkers.checker(HumanName, "given", (str,)),
    ]


def test_the_verdict_is_every_leafs_own_and_the_memos() -> None:
    rng = random.Random(11)
    for max_verdicts in (2, 6, 64):
        first = Checkers(max_verdicts, BINDINGS, shortcut_first=True)
        memo = Checkers(max_verdicts, BINDINGS)
        ids = _ids(first)
        assert _ids(memo) == ids
        for _ in range(1500):
            size = rng.randint(1, 7)
            plan = tuple(rng.choice(ids) for _ in range(size))
            leaves: list[Any] = []
            for checker in plan:
                value = rng.choice(VALUES)
                leaves.append((value,) if checker == ids[-1] else value)
            want = all(Checkers._run(first, c, v) for c, v in zip(plan, leaves, strict=True))
            assert first.accept(plan, leaves) is want, (plan, leaves)
            assert memo.accept(plan, leaves) is want, (plan, leaves)
        assert not first.accept(tuple(ids[:1]), [])  # lengths differ


def test_values_a_shortcut_accepts_are_not_memoized_nor_checked() -> None:
    checkers = _Counting(1000, shortcut_first=True)
    date, ident, gender, family, _ = _ids(checkers)
    plan = (ident, date, gender, family)
    for i in range(50):
        assert checkers.accept(plan, [f"p-{i}", "1970-03-14", "male", "Smith"])
    # The bound code (no shortcut) is checked once and memoized; the shortcuts' values never.
    assert checkers.runs == [(gender, "male")]
    assert len(checkers) == 1
    # A value its shortcut does not take: every position through the memo and checks.
    assert checkers.accept(plan, ["p-x", "1970", "male", "Smith"])
    assert (date, "1970") in checkers.runs
    assert not checkers.accept(plan, ["bad id!", "1970-03-14", "male", "Smith"])
    assert not checkers.accept(plan, ["p-1", "1970-03-14", "boy", "Smith"])


def test_the_plans_checkers_go_by_shortcut_first_and_their_splits_stay_bounded() -> None:
    validation.clear_shape_plans()
    checkers = validation._PLANS.checkers
    assert checkers.shortcut_first
    ident = checkers.checker(Patient, "id", str)
    gender = checkers.checker(Patient, "gender", str)
    for size in range(1, DEFAULT_MAX_SHAPES + 50):
        plan = (gender,) + (ident,) * (size % 7) + (gender,) * (size // 7)
        assert checkers.accept(plan, ["male"] + ["p-1"] * (size % 7) + ["male"] * (size // 7))
        assert len(checkers._splits) <= DEFAULT_MAX_SHAPES
    validation.clear_shape_plans()
