"""parse_patient on sekmet-shaped, spec-example and vendor-shaped Patients."""

from __future__ import annotations

import json

import pytest

from fhir_mapping import InvalidResource, SourcePatient, parse_patient

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.787.0.0"


def sekmet_like() -> dict:
    return {
        "resourceType": "Patient",
        "id": "sk-1",
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ],
                    "text": "MRN",
                },
                "system": MRN_SYSTEM,
                "value": "MRN30246633",
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": "Müller", "given": ["Bob"], "text": "Bob Müller"}],
        "telecom": [
            {"system": "phone", "value": "(415) 555-0123", "use": "home"},
            {"system": "email", "value": " Bob.Mueller@Example.ORG ", "use": "home"},
        ],
        "gender": "male",
        "birthDate": "1994-06",
        "address": [
            {
                "use": "home",
                "line": ["16613 North Andrea Street, Apt. 4"],
                "postalCode": "08609-1234",
                "country": "USA",
            }
        ],
    }


def test_parse_patient_builds_match_features() -> None:
    patient = parse_patient(sekmet_like(), mrn_system=MRN_SYSTEM)
    name = patient.names[0]
    assert (name.family_folded, name.family_alternates) == ("muller", ["mueller"])
    assert name.given_canonical == ["robert"]
    assert (patient.birth_year, patient.birth_month, patient.birth_day) == (1994, 6, None)
    assert patient.identifiers[0].kind == "mrn"
    assert [t.value_normalized for t in patient.telecom] == [
        "+14155550123",
        "bob.mueller@example.org",
    ]
    assert patient.telecom[1].value == " Bob.Mueller@Example.ORG "
    assert patient.addresses[0].line_normalized == "16613 n andrea st apt 4"
    assert patient.addresses[0].postal_normalized == "08609"


def test_source_patient_round_trips_through_json() -> None:
    patient = parse_patient(sekmet_like(), mrn_system=MRN_SYSTEM)
    assert SourcePatient.from_dict(json.loads(json.dumps(patient.to_dict()))) == patient


def test_invalid_patient_carries_fhir_paths() -> None:
    raw = sekmet_like()
    raw["birthDate"] = "1994-13-45"
    raw["name"][0]["given"] = "Bob"
    with pytest.raises(InvalidResource) as caught:
        parse_patient(raw)
    paths = {issue.path for issue in caught.value.issues}
    assert paths == {"Patient.birthDate", "Patient.name[0].given"}
    outcome = caught.value.to_operation_outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Bob" not in json.dumps(outcome)


def test_source_merges_and_multiple_birth_are_carried() -> None:
    raw = sekmet_like()
    raw["link"] = [{"other": {"reference": "Patient/sk-0"}, "type": "replaces"}]
    raw["multipleBirthBoolean"] = True
    patient = parse_patient(raw)
    assert patient.links == [{"other": {"reference": "Patient/sk-0"}, "type": "replaces"}]
    assert patient.multiple_birth is True
