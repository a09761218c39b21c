"""Validation: FHIR paths and reasons, required bindings, strict JSON types, Bundles, NDJSON."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient

from fhir_mapping import (
    InvalidResource,
    bundle_resources,
    ndjson_resources,
    parse_encounter,
    parse_patient,
    validate_resource,
)


def invalid_paths(raw: object, expected_type: str | None = None) -> set[str]:
    with pytest.raises(InvalidResource) as caught:
        validate_resource(raw, expected_type)
    return {issue.path for issue in caught.value.issues}


def test_valid_resources_return_their_model() -> None:
    assert isinstance(validate_resource({"resourceType": "Patient", "id": "p1"}), Patient)
    encounter = {"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"}}
    assert isinstance(validate_resource(encounter), Encounter)


@pytest.mark.parametrize(
    ("raw", "paths"),
    [
        ({"resourceType": "Patient", "birthDate": "1974-13-01"}, {"Patient.birthDate"}),
        ({"resourceType": "Patient", "name": [{"given": "Peter"}]}, {"Patient.name[0].given"}),
        ({"resourceType": "Patient", "name": [{"given": [""]}]}, {"Patient.name[0].given[0]"}),
        ({"resourceType": "Patient", "id": "has space"}, {"Patient.id"}),
        ({"resourceType": "Patient", "telecom": [{"value": 5}]}, {"Patient.telecom[0].value"}),
        ({"resourceType": "Patient", "favouriteColour": "teal"}, {"Patient.favouriteColour"}),
        (
            {"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2015"},
            {"Patient"},
        ),
        ({"resourceType": "Patient", "gender": "M"}, {"Patient.gender"}),
        ({"resourceType": "Patient", "active": "true"}, {"Patient.active"}),
        (
            {"resourceType": "Patient", "telecom": [{"system": "phone", "rank": "1"}]},
            {"Patient.telecom[0].rank"},
        ),
        ({"resourceType": "Patient", "name": [{"use": "nick"}]}, {"Patient.name[0].use"}),
        ({"resourceType": "Patient", "address": [{"use": "primary"}]}, {"Patient.address[0].use"}),
        (
            {
                "resourceType": "Patient",
                "link": [{"other": {"reference": "Patient/1"}, "type": "same"}],
            },
            {"Patient.link[0].type"},
        ),
        ({"resourceType": "Patient", "birthDate": 0.0}, {"Patient.birthDate"}),  # not 1970-01-01
        ({"resourceType": "Patient", "deceasedDateTime": 2015.5}, {"Patient.deceasedDateTime"}),
        (
            {"resourceType": "Patient", "name": [{"period": {"start": 0.0}}]},
            {"Patient.name[0].period.start"},
        ),
        (
            {"resourceType": "Patient", "contact": [{"name": {"use": "x"}}]},
            {"Patient.contact[0].name.use"},
        ),
        (
            {"resourceType": "Encounter", "status": "planned", "class": {}, "period": {"end": 1.5}},
            {"Encounter.period.end"},
        ),
        (
            {"resourceType": "Encounter", "status": "done", "class": {"code": "AMB"}},
            {"Encounter.status"},
        ),
        (
            {"resourceType": "Encounter", "status": "finished", "class": {"code": 1}},
            {"Encounter.class.code"},
        ),
    ],
)
def test_invalid_resources_carry_fhir_paths(raw: dict, paths: set[str]) -> None:
    assert invalid_paths(raw) == paths


@pytest.mark.parametrize("raw", [None, [], "Patient", 3, {"id": "x"}, {"resourceType": "Nope"}])
def test_non_resources_are_invalid(raw: object) -> None:
    with pytest.raises(InvalidResource):
        validate_resource(raw)


def test_wrong_type_is_invalid_for_the_typed_parsers() -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_patient({"resourceType": "Encounter", "id": "e1", "status": "planned", "class": {}})
    assert caught.value.issues[0].path == "Patient.resourceType"
    with pytest.raises(InvalidResource):
        parse_encounter({"resourceType": "Patient", "id": "p1"})


def test_error_becomes_operation_outcome_and_quarantine_entry_without_patient_data() -> None:
    raw = {
        "resourceType": "Patient",
        "id": "p9",
        "birthDate": "25/12/1974",
        "name": [{"family": 7}],
    }
    with pytest.raises(InvalidResource) as caught:
        parse_patient(raw)
    error = caught.value
    assert (error.resource_type, error.resource_id) == ("Patient", "p9")
    outcome = error.to_operation_outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert {tuple(i["expression"]) for i in outcome["issue"]} == {
        ("Patient.birthDate",),
        ("Patient.name[0].family",),
    }
    assert all(i["severity"] == "error" and i["diagnostics"] for i in outcome["issue"])
    dumped = json.dumps(error.to_dict()) + json.dumps(outcome) + str(error)
    assert "25/12/1974" not in dumped
    assert InvalidResource.from_dict(json.loads(json.dumps(error.to_dict()))).issues == error.issues
    validate_resource(outcome)  # the OperationOutcome itself is valid FHIR


def test_bundle_entries_are_split_and_bad_entries_reported() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}},
            {"fullUrl": "urn:uuid:1"},
            {"resource": {"resourceType": "Encounter", "id": "e", "status": "x", "class": {}}},
        ],
    }
    items = list(bundle_resources(bundle))
    assert isinstance(items[0], dict) and items[0]["id"] == "a"
    assert isinstance(items[1], InvalidResource)
    assert items[1].issues[0].path == "Bundle.entry[1].resource"
    assert isinstance(items[2], dict)
    with pytest.raises(InvalidResource):
        validate_resource(items[2])  # split first, validated one by one
    with pytest.raises(InvalidResource):
        list(bundle_resources({"resourceType": "Patient"}))


def test_ndjson_lines_are_split_and_bad_lines_reported() -> None:
    lines = [
        '{"resourceType": "Patient", "id": "a"}\n',
        "\n",
        "{not json\n",
        "[1, 2]\n",
        b'{"resourceType": "Patient", "id": "b"}',
    ]
    items = list(ndjson_resources(lines))
    assert [i["id"] if isinstance(i, dict) else i.issues[0].path for i in items] == [
        "a",
        "line 3",
        "line 4",
        "b",
    ]
