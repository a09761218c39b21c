"""render_golden_patient: the golden record as valid R4 Patient JSON."""

from __future__ import annotations

import json

import pytest

from fhir_mapping import (
    PROVENANCE_EXTENSION,
    ContactPoint,
    GoldenLink,
    GoldenRecord,
    Identifier,
    InvalidResource,
    PersonName,
    golden_record_from_patient,
    parse_patient,
    render_golden_patient,
    validate_resource,
)
from tests.fhir_mapping.test_fixtures import fixture

GOLDEN_ID = "5b0e0c3e-2f4d-4a7e-9c1b-8d7f6e5a4b3c"


def test_render_carries_meta_identifiers_ranked_lists_links_and_provenance() -> None:
    data = fixture("epic_patient.json")
    source = parse_patient(data["resource"], mrn_system=data["mrn_system"])
    golden = golden_record_from_patient(source, GOLDEN_ID)
    golden.links.append(
        GoldenLink(other_id="0d9b2f1a-1111-4222-8333-944455556666", type="replaces")
    )
    rendered = render_golden_patient(
        golden,
        version=3,
        last_updated="2026-11-22T07:30:00Z",
        provenance_url="Provenance?target=Patient/" + GOLDEN_ID,
    )
    assert rendered["id"] == GOLDEN_ID
    assert rendered["meta"] == {"versionId": "3", "lastUpdated": "2026-11-22T07:30:00Z"}
    assert [(i["system"], i["value"]) for i in rendered["identifier"]] == [
        (i["system"], i["value"]) for i in data["resource"]["identifier"]
    ]
    assert [t["rank"] for t in rendered["telecom"]] == [1, 2, 3]
    assert [a["use"] for a in rendered["address"]] == ["old", "home"]
    assert rendered["link"] == [
        {"other": {"reference": "Patient/0d9b2f1a-1111-4222-8333-944455556666"}, "type": "replaces"}
    ]
    provenance = [e for e in rendered["extension"] if e["url"] == PROVENANCE_EXTENSION]
    assert provenance[0]["valueReference"]["reference"].endswith(GOLDEN_ID)
    urls = {e["url"].rsplit("/", 1)[-1] for e in rendered["extension"]}
    assert {"us-core-race", "us-core-ethnicity", "us-core-birthsex"} <= urls
    assert rendered["communication"][0]["preferred"] is True
    validate_resource(rendered, "Patient")


def test_twin_birth_order_and_contacts_survive_rendering() -> None:
    source = parse_patient(fixture("spec_patient_contained_extensions.json")["resource"])
    rendered = render_golden_patient(golden_record_from_patient(source, GOLDEN_ID))
    assert rendered["multipleBirthInteger"] == 2
    example = parse_patient(fixture("spec_patient_example.json")["resource"])
    rendered = render_golden_patient(golden_record_from_patient(example, GOLDEN_ID))
    assert rendered["contact"][0]["name"]["family"] == "du Marché"
    assert "multipleBirthBoolean" not in rendered


def test_merged_golden_renders_inactive_with_replaced_by() -> None:
    golden = GoldenRecord(
        id=GOLDEN_ID,
        active=False,
        links=[GoldenLink(other_id="7a6b5c4d-0000-4000-8000-000000000001", type="replaced-by")],
    )
    rendered = render_golden_patient(golden)
    assert rendered["active"] is False
    assert rendered["link"][0]["type"] == "replaced-by"
    assert "meta" not in rendered


def test_deceased_date_time_wins_over_flag() -> None:
    golden = GoldenRecord(
        id=GOLDEN_ID, deceased=True, deceased_datetime="2015-02-14T13:42:00+10:00"
    )
    rendered = render_golden_patient(golden)
    assert rendered["deceasedDateTime"] == "2015-02-14T13:42:00+10:00"
    assert "deceasedBoolean" not in rendered


def test_empty_values_are_left_out() -> None:
    golden = GoldenRecord(
        id=GOLDEN_ID,
        names=[PersonName(use="official"), PersonName(family="Lopez")],
        telecom=[ContactPoint(system="phone"), ContactPoint(system="phone", value="469-555-5555")],
        identifiers=[Identifier(system="urn:oid:1.2", value=None)],
    )
    rendered = render_golden_patient(golden)
    assert rendered["name"] == [{"family": "Lopez"}]
    assert rendered["telecom"] == [{"system": "phone", "value": "469-555-5555", "rank": 1}]
    assert "identifier" not in rendered


def test_invalid_golden_record_is_refused() -> None:
    with pytest.raises(InvalidResource) as caught:
        render_golden_patient(GoldenRecord(id=GOLDEN_ID, gender="M", birth_date="14/03/1970"))
    assert {i.path for i in caught.value.issues} == {"Patient.birthDate"}
    with pytest.raises(InvalidResource) as caught:
        render_golden_patient(GoldenRecord(id=GOLDEN_ID, gender="M"))
    assert {i.path for i in caught.value.issues} == {"Patient.gender"}


def test_identifier_types_are_served_as_the_source_gave_them() -> None:
    """A type coded in the source's own code system, or given as text only, is served
    as it came: only a v2-0203 code is served as one (it once was rebuilt from the code
    alone, which served Oracle Health's codeSet/4 code "10" as v2-0203 "10")."""
    v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
    local = {
        "coding": [{"system": "https://ehr.example.org/codeSet/4", "code": "10", "display": "MRN"}],
        "text": "MRN",
    }
    types = [
        local,
        {"text": "EPI"},
        {"coding": [{"system": v2, "code": "SS"}]},
        {"coding": [{"code": "DL"}]},
        None,
    ]
    resource = {
        "resourceType": "Patient",
        "identifier": [
            {"system": f"urn:x:{n}", "value": f"V{n}", **({"type": t} if t else {})}
            for n, t in enumerate(types)
        ],
    }
    source = parse_patient(resource)
    # Just the v2-0203 code is not kept twice: the code says it all.
    assert [i.type for i in source.identifiers] == [local, {"text": "EPI"}, None, types[3], None]
    assert [i.type_code for i in source.identifiers] == ["10", None, "SS", "DL", None]
    again = type(source).from_dict(json.loads(json.dumps(source.to_compact_dict())))
    assert again == source
    rendered = render_golden_patient(golden_record_from_patient(again, GOLDEN_ID))
    served = {i["value"]: i.get("type") for i in rendered["identifier"]}
    assert served == {f"V{n}": t for n, t in enumerate(types)}
    validate_resource(rendered, "Patient")
    # A type that was the v2-0203 code with more to it (a display) is kept whole.
    displayed = {"coding": [{"system": v2, "code": "MR", "display": "Medical record number"}]}
    resource["identifier"] = [{"system": "urn:x:mr", "value": "M", "type": displayed}]
    assert parse_patient(resource).identifiers[0].type == displayed
