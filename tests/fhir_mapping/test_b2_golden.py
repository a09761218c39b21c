"""Golden outputs of the Patient mapping, recorded before the mapping was made faster.

``test_b2_golden_patients.json`` holds a fixed sample of Patients (generated with
``tools.ehrgen`` across its locales and corruptions, the specification's and the EHR
sandboxes' examples from ``tests/fixtures/fhir``, and hand-written edge shapes), each
with the options it is parsed with and the SHA-256 of:

- ``normalized``: the canonical JSON of ``parse_patient(...).to_dict()`` (what
  ``source_record.normalized`` stores);
- ``content``: :func:`sync.content_hash` of the raw resource (the skip-unchanged key);
- ``golden``: the canonical JSON of ``render_golden_patient`` of the one-record golden
  record, with version, timestamp and provenance;
- ``tokens``: the canonical JSON of ``search_tokens`` of that rendering.

The sample's inputs are stored, not regenerated, so a change of the generator does not
move the expectations. Re-record only for an intended change of the mapping's output:
``.venv/bin/python -m tests.fhir_mapping.test_b2_golden --record``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from fhir_mapping import (
    Address,
    Coding,
    ContactPoint,
    Identifier,
    Period,
    PersonName,
    SourceEncounter,
    SourcePatient,
    golden_record_from_patient,
    parse_patient,
    render_golden_patient,
    search_tokens,
)
from sync import content_hash

FIXTURE = Path(__file__).resolve().with_name("test_b2_golden_patients.json")
FHIR_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "fhir"
#: Generated people sampled (every ``_STRIDE``-th Patient of each source is kept).
_PEOPLE = 600
_SEED = 6062026
_STRIDE = 10
_REGIONS = ("US", "DE", "LT", "VN", "GB", "")
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha(value: Any) -> str:
    return hashlib.sha256(_CANONICAL.encode(value).encode("utf-8")).hexdigest()


def _plain_json(value: Any) -> bool:
    """True when ``value`` is made of dict, list, str, int, float, bool and None only."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _parse(case: dict[str, Any]) -> SourcePatient:
    options = case["options"]
    return parse_patient(
        case["raw"], default_region=options["region"], mrn_system=options["mrn_system"]
    )


def digests(case: dict[str, Any]) -> dict[str, str]:
    patient = _parse(case)
    golden = golden_record_from_patient(patient, "golden-" + patient.resource_id)
    golden.links = []
    rendered = render_golden_patient(
        golden,
        version=3,
        last_updated="2026-11-22T12:00:00Z",
        provenance_url="Provenance/prov-" + patient.resource_id,
    )
    return {
        "normalized": _sha(patient.to_dict()),
        "content": content_hash(case["raw"]),
        "golden": _sha(rendered),
        "tokens": _sha([list(t) for t in search_tokens(rendered)]),
    }


def _cases() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


CASES = _cases() if FIXTURE.exists() else []


def test_the_sample_is_large_and_varied() -> None:
    assert len(CASES) >= 120
    raws = [c["raw"] for c in CASES]
    assert sum(1 for r in raws if "\\u" in json.dumps(r)) >= 10  # non-ASCII names, lines
    assert sum(1 for r in raws if any("text" in n for n in r.get("name") or ())) >= 5
    assert {c["options"]["region"] for c in CASES} >= {"US", "DE", ""}


@pytest.mark.parametrize("case", CASES, ids=[c["raw"].get("id", "?") for c in CASES])
def test_mapping_output_is_unchanged(case: dict[str, Any]) -> None:
    assert digests(case) == case["expected"]


def test_normalized_dict_is_plain_json_and_round_trips() -> None:
    for case in CASES:
        normalized = _parse(case).to_dict()
        assert _plain_json(normalized)
        assert json.loads(json.dumps(normalized)) == normalized
        again = SourcePatient.from_dict(normalized)
        assert again.to_dict() == normalized
        assert again == _parse(case)


def test_normalized_dict_is_dataclasses_asdict() -> None:
    """``to_dict`` is written field by field: it must stay ``asdict``, fields added included."""
    for case in CASES:
        patient = _parse(case)
        assert patient.to_dict() == dataclasses.asdict(patient)
    empty = SourcePatient(
        "x",
        names=[PersonName()],
        identifiers=[Identifier()],
        telecom=[ContactPoint()],
        addresses=[Address()],
    )
    assert list(empty.to_dict()) == [f.name for f in dataclasses.fields(SourcePatient)]
    assert empty.to_dict() == dataclasses.asdict(empty)


def test_from_dict_ignores_unknown_keys_and_defaults_missing_ones() -> None:
    stored = {
        "resource_id": "r1",
        "retired_field": 1,
        "names": [{"family": "Lee", "period": {"start": "2001", "old": True}, "gone": 2}],
        "telecom": [{"system": "phone"}],
        "identifiers": None,
    }
    patient = SourcePatient.from_dict(stored)
    assert patient.names == [PersonName(family="Lee", period=Period(start="2001"))]
    assert patient.telecom == [ContactPoint(system="phone")]
    assert patient.identifiers is None and patient.addresses == []
    assert stored["names"][0]["period"] == {"start": "2001", "old": True}  # input untouched
    encounter = SourceEncounter.from_dict(
        {"resource_id": "e1", "class_code": {"code": "AMB"}, "types": [{"code": "x"}]}
    )
    assert encounter.class_code == Coding(code="AMB")
    assert encounter.types == [Coding(code="x")]


def test_normalized_dict_does_not_share_the_input() -> None:
    """The stored dict is its own: mutating it leaves the raw resource alone."""
    for case in CASES:
        raw = json.loads(json.dumps(case["raw"]))
        normalized = parse_patient(raw).to_dict()

        def scribble(value: Any) -> None:
            if isinstance(value, dict):
                for v in value.values():
                    scribble(v)
                value["scribbled"] = True
            elif isinstance(value, list):
                for v in value:
                    scribble(v)
                value.append("scribbled")

        scribble(normalized)
        assert raw == case["raw"]


# Recording (run once, before changing the mapping) ---------------------------------


def _edge_cases() -> list[dict[str, Any]]:
    """Hand-written shapes the generator does not make."""
    ext = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-"
    period = {"start": "2001-02-03", "end": "2020-01-01T10:00:00Z"}
    return [
        {
            "resourceType": "Patient",
            "id": "edge-everything",
            "meta": {"versionId": "7", "lastUpdated": "2026-02-03T04:05:06.789+01:00"},
            "extension": [
                {
                    "url": ext + "race",
                    "extension": [{"url": "text", "valueString": "White"}],
                },
                {
                    "url": ext + "ethnicity",
                    "extension": [{"url": "text", "valueString": "Not Hispanic"}],
                },
                {"url": ext + "birthsex", "valueCode": "F"},
                {"url": "http://example.org/other", "valueString": "kept"},
            ],
            "modifierExtension": [],
            "identifier": [
                {
                    "use": "official",
                    "type": {"coding": [{"system": "urn:x", "code": "DL"}], "text": "Driver"},
                    "system": "urn:oid:2.16.840.1.113883.4.3.25",
                    "value": "s123-456-789",
                    "period": period,
                },
                {"type": {"text": "MRN"}, "value": " mr 00 12 "},
                {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "666-12-3456"},
                {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "\uff10\uff17\uff18-05-1120"},
                {"system": "urn:no-value"},
            ],
            "active": False,
            "name": [
                {"use": "official", "family": "van der Berg Jr", "given": ["Jan", "Pieter"]},
                {"use": "usual", "text": "Nguyễn Văn An"},
                {"text": "Smith, Bob"},
                {"family": "Müller-Lüdenscheidt", "given": ["Jürgen"], "suffix": ["III"]},
                {"given": ["Beth"], "prefix": ["Dr."], "period": period},
                {"family": "O\u2019Brien", "given": ["Seán"], "text": "Seán O\u2019Brien"},
                {"family": "Wang", "given": ["Xiaoming"], "text": "Wang Xiaoming"},
                {"family": "Шевченко", "given": ["\u0422\u0430\u0440\u0430\u0441"]},
                {"family": "ٱلحسن", "given": ["محمد"]},
                {"use": "old", "period": {"end": "1999"}},
            ],
            "telecom": [
                {"system": "phone", "value": "tel:+1 (415) 555-0123", "use": "work", "rank": 2},
                {"system": "phone", "value": "+49 (0) 30 1234567"},
                {"system": "phone", "value": "8 612 34567"},
                {"system": "phone", "value": "+370 612 34567"},
                {"system": "phone", "value": "415.555.0199 ext. 12"},
                {"system": "phone", "value": "+44 20 7946 0958", "period": period},
                {"system": "phone", "value": "000"},
                {"system": "fax", "value": "1-800-FLOWERS"},
                {"system": "sms", "value": "+84 91 234 56 78"},
                {"system": "email", "value": " MailTo:John.Doe@Example.COM "},
                {"system": "email", "value": "not an email"},
                {"system": "url", "value": " https://example.org/me "},
                {"system": "other"},
            ],
            "gender": "other",
            "_gender": {"extension": [{"url": "http://example.org/g", "valueString": "x"}]},
            "birthDate": "1970-03",
            "_birthDate": {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                        "valueDateTime": "1970-03-14T14:35:45-05:00",
                    }
                ]
            },
            "deceasedDateTime": "2020-05-06",
            "address": [
                {
                    "use": "home",
                    "type": "both",
                    "text": "12 North Main Street, Apt. 4",
                    "line": ["12 North Main Street", "Apartment 4", "#"],
                    "city": "San Francisco",
                    "district": "SF",
                    "state": "CA",
                    "postalCode": "94105-1234",
                    "country": "USA",
                    "period": period,
                },
                {"line": ["Straße des 17. Juni 135"], "city": "Berlin", "postalCode": "10623"},
                {"line": ["10 Downing St"], "postalCode": "sw1a2aa", "country": "United Kingdom"},
                {"postalCode": "k1a 0b1", "country": "CA"},
                {"text": "Gedimino pr. 9, Vilnius", "country": "LT", "postalCode": "LT-01103"},
                {"city": "Hà Nội"},
            ],
            "maritalStatus": {"text": "Married"},
            "multipleBirthInteger": 2,
            "communication": [
                {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "de"}]}},
                {
                    "language": {
                        "coding": [{"display": "none"}, {"code": "en-US", "display": "English"}],
                        "text": "English",
                    },
                    "preferred": True,
                },
                {"language": {"text": "Vietnamese"}},
            ],
            "contact": [
                {
                    "relationship": [{"text": "mother"}],
                    "name": {"family": "Doe", "given": ["Jane"]},
                    "telecom": [{"system": "phone", "value": "555-0100"}],
                }
            ],
            "generalPractitioner": [{"reference": "Practitioner/1"}],
            "managingOrganization": {"reference": "Organization/2", "display": "Clinic"},
            "link": [{"other": {"reference": "Patient/old-1"}, "type": "replaces"}],
        },
        {"resourceType": "Patient", "id": "edge-bare"},
        {
            "resourceType": "Patient",
            "id": "edge-deceased-boolean",
            "deceasedBoolean": False,
            "multipleBirthBoolean": True,
            "birthDate": "1999",
            "name": [{"family": "Lee"}],
            "telecom": [{"system": "phone", "value": "(212) 555-0143"}],
        },
        {
            "resourceType": "Patient",
            "id": "edge-text-only",
            "name": [{"text": "Ali"}, {"text": "  "}, {"text": "Nguyen Thi Mai"}],
            "address": [{"line": ["  ", "Rue de l'Église 3"], "country": "France"}],
        },
    ]


def _record() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tools.ehrgen import generate

    cases: list[dict[str, Any]] = []
    generated = generate(_PEOPLE, seed=_SEED)
    for source, patients in sorted(generated.patients_by_source.items()):
        for i, raw in enumerate(patients[::_STRIDE]):
            region = _REGIONS[i % len(_REGIONS)]
            mrn = f"http://{source}.example.org/fhir/mrn" if i % 2 else None
            cases.append({"raw": raw, "options": {"region": region, "mrn_system": mrn}})
    for path in sorted(FHIR_FIXTURES.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["resource"]["resourceType"] == "Patient":
            for region in ("US", "AU"):
                options = {"region": region, "mrn_system": data.get("mrn_system")}
                cases.append({"raw": data["resource"], "options": options})
    for raw in _edge_cases():
        for region, mrn in (("US", None), ("DE", "urn:oid:2.16.840.1.113883.4.3.25")):
            cases.append({"raw": raw, "options": {"region": region, "mrn_system": mrn}})
    for case in cases:
        case["expected"] = digests(case)
    FIXTURE.write_text(
        json.dumps(cases, ensure_ascii=True, separators=(",", ":")).replace("},{", "},\n{") + "\n",
        encoding="utf-8",
    )
    print(f"recorded {len(cases)} cases in {FIXTURE.name}")


if __name__ == "__main__" and "--record" in sys.argv:
    _record()
