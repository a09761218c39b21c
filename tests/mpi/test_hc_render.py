"""render_golden_patient writes the same JSON text, key order included, as the top level
it had before it was written key by key: one ``_compact`` of the whole dict (kept below as
the reference), for golden records of the recorded Patient sample and for what only a
golden record carries (links, deceased, multiple birth, contacts, marital status, an
inactive record)."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import orjson

from fhir_mapping import GoldenLink, GoldenRecord, golden_record_from_patient, parse_patient
from fhir_mapping.patient import US_CORE_BIRTH_SEX
from fhir_mapping.render import (
    PROVENANCE_EXTENSION,
    _address,
    _communication,
    _compact,
    _identifier,
    _name,
    _telecom,
    render_golden_patient,
)
from tests.fhir_mapping.test_b2_golden import CASES


def _reference(
    golden: GoldenRecord,
    version: int | None,
    last_updated: str | None,
    provenance_url: str | None,
) -> dict[str, Any]:
    extensions: list[dict[str, Any]] = []
    if golden.race:
        extensions.append(golden.race)
    if golden.ethnicity:
        extensions.append(golden.ethnicity)
    if golden.birth_sex:
        extensions.append({"url": US_CORE_BIRTH_SEX, "valueCode": golden.birth_sex})
    if provenance_url:
        extensions.append(
            {"url": PROVENANCE_EXTENSION, "valueReference": {"reference": provenance_url}}
        )
    meta = _compact(
        {"versionId": str(version) if version is not None else None, "lastUpdated": last_updated}
    )
    return _compact(
        {
            "resourceType": "Patient",
            "id": golden.id,
            "meta": meta,
            "extension": extensions,
            "identifier": [_identifier(i) for i in golden.identifiers if i.value],
            "active": golden.active,
            "name": [n for n in (_name(x) for x in golden.names) if n is not None],
            "telecom": [
                _telecom(t, i) for i, t in enumerate((t for t in golden.telecom if t.value), 1)
            ],
            "gender": golden.gender,
            "birthDate": golden.birth_date,
            "deceasedDateTime": golden.deceased_datetime,
            "deceasedBoolean": golden.deceased if golden.deceased_datetime is None else None,
            "address": [a for a in (_address(x) for x in golden.addresses) if a],
            "maritalStatus": golden.marital_status,
            "multipleBirthBoolean": (
                golden.multiple_birth if isinstance(golden.multiple_birth, bool) else None
            ),
            "multipleBirthInteger": (
                None if isinstance(golden.multiple_birth, bool) else golden.multiple_birth
            ),
            "contact": list(golden.contacts),
            "communication": [c for c in (_communication(x) for x in golden.languages) if c],
            "link": [
                {"other": {"reference": f"Patient/{link.other_id}"}, "type": link.type}
                for link in golden.links
            ],
        }
    )


def _variants(rng: random.Random, golden: GoldenRecord) -> list[GoldenRecord]:
    out = [golden, GoldenRecord(id=golden.id)]
    for _ in range(4):
        out.append(
            dataclasses.replace(
                golden,
                links=rng.choice(
                    [
                        [],
                        [GoldenLink("g-2", "replaced-by")],
                        [GoldenLink("g-3", "replaces"), GoldenLink("g-4", "replaces")],
                    ]
                ),
                active=rng.choice([True, False]),
                deceased=rng.choice([None, True, False]),
                deceased_datetime=rng.choice([None, "2020-02-02"]),
                multiple_birth=rng.choice([None, True, False, 0, 2]),
                contacts=rng.choice([[], [{"relationship": [{"text": "mother"}]}]]),
                marital_status=rng.choice([golden.marital_status, None, {"text": "Widowed"}]),
                gender=rng.choice([golden.gender, None]),
                birth_date=rng.choice([golden.birth_date, None]),
            )
        )
    return out


def test_rendering_is_the_same_text_as_before() -> None:
    rng = random.Random(5)
    rendered = 0
    for case in CASES:
        options = case["options"]
        patient = parse_patient(
            case["raw"], default_region=options["region"], mrn_system=options["mrn_system"]
        )
        for golden in _variants(rng, golden_record_from_patient(patient, "g-" + str(rendered))):
            version = rng.choice([None, 3])
            last_updated = rng.choice([None, "2026-11-22T12:00:00Z"])
            provenance_url = rng.choice([None, "Provenance/p-1"])
            got = render_golden_patient(
                golden,
                version=version,
                last_updated=last_updated,
                provenance_url=provenance_url,
                validate=False,
            )
            expected = _reference(golden, version, last_updated, provenance_url)
            assert json.dumps(got) == json.dumps(expected)
            assert orjson.dumps(got) == orjson.dumps(expected)
            rendered += 1
    assert rendered >= 6 * 120
