"""Shape trees: the top-level key tuples with several planned shapes (generated Patients:
their numbers of names, identifiers, telecoms...) are recognised by one generated
decision tree per key tuple instead of a walk; the tree gives exactly the plan and the
leaves of the one shape a resource has, and the fast path keeps the library's verdict."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from typing import Any

import pytest

from fhir_mapping import matchers
from fhir_mapping import validate as validation
from fhir_mapping.matchers import ShapeTrees
from fhir_mapping.shapes import Unplannable
from tests.fhir_mapping.test_c_fastpath import (
    SEED,
    fast,
    oracle,
    seed_resources,
    structural_case,
    value_variant,
)
from tools.ehrgen import generate


@pytest.fixture(autouse=True)
def cold_plans() -> Any:
    validation.clear_shape_plans()
    yield
    validation.clear_shape_plans()


def _keyed(cases: list[dict[str, Any]]) -> list[tuple[dict[str, Any], tuple[Any, ...], list[Any]]]:
    keyed = []
    for case in cases:
        try:
            shape, leaves = validation._shape_key(case)
        except Unplannable:
            continue
        keyed.append((case, shape, leaves))
    return keyed


def _cases() -> list[dict[str, Any]]:
    rng = random.Random(SEED + 7)
    generated = generate(60, seed=SEED + 7)
    patients = [p for items in generated.patients_by_source.values() for p in items]
    cases: list[dict[str, Any]] = []
    for seed in [*seed_resources(), *patients]:
        for _ in range(3):
            case = structural_case(rng, seed)
            cases += [case, value_variant(rng, case)]
    return cases


def test_a_tree_recognises_exactly_its_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each key tuple's tree is given some of its shapes: it returns (plan, leaves) of
    the shape a resource has when that shape was given, else None."""
    monkeypatch.setattr(matchers, "WALKS_PER_LINE", 0)  # compiled at every add
    keyed = _keyed(_cases())
    by_keys: dict[tuple[Any, ...], dict[tuple[Any, ...], dict[str, Any]]] = defaultdict(dict)
    for case, shape, _ in keyed:
        by_keys[tuple(case)].setdefault(shape, case)
    trees = ShapeTrees(max_keys=len(by_keys), max_shapes=len(keyed))
    plans: dict[tuple[Any, ...], tuple[int, ...]] = {}
    for shapes in by_keys.values():
        for number, (shape, case) in enumerate(shapes.items()):
            if number % 3 != 2:  # every third shape stays out of the tree
                plans[shape] = (len(plans),)
                trees.add(case, shape, plans[shape])
    assert max(len(shapes) for shapes in by_keys.values()) >= 10
    found = missed = 0
    for case, shape, leaves in keyed:
        result = trees.find(case)
        if shape in plans:
            assert result == (plans[shape], tuple(leaves)), json.dumps(case)
            found += 1
        else:
            assert result is None, json.dumps(case)
            missed += 1
    assert found >= 500 and missed >= 100, (found, missed)


def test_a_tree_too_deep_keeps_what_it_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matchers, "WALKS_PER_LINE", 0)
    monkeypatch.setattr(matchers, "MAX_TREE_DEPTH", 2)
    base: dict[str, Any] = {"resourceType": "Patient", "id": "t1"}
    shapes = [
        {**base, "telecom": [{"value": "1"}] * count, "name": [{"family": "A"}] * names}
        for count in (1, 2, 3)
        for names in (1, 2, 3)
    ]
    keyed = _keyed(shapes)
    trees = ShapeTrees()
    for number, (case, shape, _) in enumerate(keyed):
        trees.add(case, shape, (number,))
    results = [trees.find(case) for case, _, _ in keyed]
    assert results[0] == ((0,), ("t1", "1", "A"))
    assert None in results  # past the depth: walked
    for (case, _, leaves), result in zip(keyed, results, strict=True):
        assert result is None or result[1] == tuple(leaves)


def test_the_fast_path_finds_generated_patients_in_their_trees() -> None:
    """Generated Patients of many shapes under a few key tuples: once walked often enough
    their trees decide them, with the library's verdict for valid and invalid values."""
    generated = generate(300, seed=SEED + 11)
    patients = [p for items in generated.patients_by_source.values() for p in items]
    for _ in range(3):  # walks pay for the trees' compilation
        for raw in patients:
            assert fast(raw, "Patient") is None
    by_tree = [raw for raw in patients if validation._TREES.find(raw) is not None]
    assert len(by_tree) >= len(patients) // 2, (len(by_tree), len(patients))
    assert len({tuple(raw) for raw in by_tree}) >= 2
    rng = random.Random(SEED + 11)
    for raw in by_tree[:300]:
        variant = json.loads(json.dumps(raw))
        choice = rng.randrange(3)
        if choice == 0:
            variant["birthDate"] = rng.choice(["1970-02-30", "1970-13-01", "1970-01-01"])
        elif choice == 1:
            variant["id"] = rng.choice(["a b", "", "ok-id"])
        else:
            variant["gender"] = rng.choice(["male", "Male", "unknown", "x"])
        if validation._TREES.find(variant) is None and "birthDate" in raw:
            continue  # a value variant keeps its shape: found unless the key is missing
        assert fast(variant, "Patient") == oracle(variant, "Patient"), json.dumps(variant)


def test_the_trees_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matchers, "WALKS_PER_LINE", 0)
    base: dict[str, Any] = {"resourceType": "Patient", "id": "t1"}
    shapes = [{**base, "telecom": [{"value": "1"}] * count} for count in range(1, 8)]
    keyed = _keyed(shapes)
    trees = ShapeTrees(max_shapes=4)
    for number, (case, shape, _) in enumerate(keyed):
        trees.add(case, shape, (number,))
    assert trees.find(keyed[0][0]) is None  # dropped with the first four
    assert trees.find(keyed[-1][0]) == ((6,), ("t1", "1", "1", "1", "1", "1", "1", "1"))
