"""The synthetic EHR generator: valid FHIR, deterministic, with a truth file that round-trips."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient

from tools.ehrgen import generate, read_truth_csv, write_ndjson


def test_every_resource_is_valid_fhir_r4() -> None:
    generated = generate(150, seed=11, encounters_per_patient=1.5)
    patients = [r for rs in generated.patients_by_source.values() for r in rs]
    encounters = [r for rs in generated.encounters_by_source.values() for r in rs]
    for resource in patients:
        Patient.model_validate(resource)
    for resource in encounters:
        Encounter.model_validate(resource)
    assert len(generated.truth) == len(patients)
    assert 1.2 * len(patients) < len(encounters) < 1.8 * len(patients)


def test_same_seed_same_data_and_people_span_sources() -> None:
    first, second = generate(80, seed=5), generate(80, seed=5)
    assert first.patients_by_source == second.patients_by_source
    assert generate(80, seed=6).patients_by_source != first.patients_by_source
    per_person = Counter(row.person_id for row in first.truth)
    assert max(per_person.values()) >= 3
    assert sum(1 for n in per_person.values() if n > 1) > len(per_person) / 2


def test_hard_negatives_and_locales_are_planted() -> None:
    tags = Counter(tag for row in generate(1500, seed=2).truth for tag in row.tags)
    for tag in (
        "twin",
        "jr-sr",
        "spouse",
        "namesake",
        "nickname",
        "typo",
        "married-name",
        "moved",
        "dm-transposed",
        "locale-de",
        "locale-lt",
        "locale-vi",
        "locale-ar",
    ):
        assert tags[tag] > 0, tag


def test_write_ndjson_and_truth_round_trip(tmp_path: Path) -> None:
    generated = generate(40, seed=9, encounters_per_patient=1)
    folders = write_ndjson(generated, tmp_path)
    assert set(folders) == {"ehr-a", "ehr-b", "ehr-c"}
    lines = (folders["ehr-a"] / "Patient.ndjson").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == generated.patients_by_source["ehr-a"]
    assert read_truth_csv(tmp_path / "truth.csv") == generated.truth
