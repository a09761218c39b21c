"""Checkers.accept: the verdict of every leaf's own check, each decided once while it stays
memoized, through generation changes in the middle of a resource."""

from __future__ import annotations

import random
from typing import Any

from fhir.resources.R4B.patient import Patient

from fhir_mapping.shapes import Checkers

VALUES = [
    "1970-03-14",
    "1970-02-30",
    "2001-01-01",
    "1999",
    "x",
    "",
    "  ",
    "ok value",
    "1999-12-31",
    "abc-1",
    "bad id!",
]


class _Counting(Checkers):
    def __init__(self, max_verdicts: int) -> None:
        super().__init__(max_verdicts=max_verdicts)
        self.runs: list[tuple[int, Any]] = []

    def _run(self, checker: int, value: Any) -> bool:
        self.runs.append((checker, value))
        return super()._run(checker, value)


def test_accept_is_the_verdict_of_every_leaf_through_generation_changes() -> None:
    rng = random.Random(7)
    for max_verdicts in (2, 3, 6, 64):
        checkers = _Counting(max_verdicts)
        ids = [
            checkers.checker(Patient, "birthDate", str),
            checkers.checker(Patient, "id", str),
            checkers.checker(Patient, "gender", str),
        ]
        for _ in range(600):
            size = rng.randint(1, 6)
            plan = tuple(rng.choice(ids) for _ in range(size))
            # Duplicates within one resource are common (the same code twice).
            leaves = [rng.choice(VALUES[: rng.randint(2, len(VALUES))]) for _ in range(size)]
            want = all(Checkers._run(checkers, c, v) for c, v in zip(plan, leaves, strict=True))
            assert checkers.accept(plan, leaves) is want
            assert len(checkers) <= max_verdicts
        assert not checkers.accept(ids[:1], [])  # lengths differ


def test_a_memoized_verdict_is_not_decided_again() -> None:
    checkers = _Counting(1000)
    date = checkers.checker(Patient, "birthDate", str)
    ident = checkers.checker(Patient, "id", str)
    plan = (date, ident, date)
    assert checkers.accept(plan, ["1970-03-14", "p-1", "1999-12-31"])
    runs = len(checkers.runs)
    assert runs == 3
    assert checkers.accept(plan, ["1970-03-14", "p-1", "1999-12-31"])
    assert len(checkers.runs) == runs
    assert not checkers.accept(plan, ["1970-03-14", "bad id!", "1970-02-30"])
    runs = len(checkers.runs)
    # A memoized refusal refuses again without any check run.
    assert not checkers.accept(plan, ["2001-01-01", "bad id!", "2002-02-02"])
    assert len(checkers.runs) == runs
