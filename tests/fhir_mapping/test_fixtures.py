"""Hard shapes from the FHIR specification's examples and the Epic and Oracle Health
documentation (``tests/fixtures/fhir``; each fixture names its source)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_mapping import SourcePatient, parse_encounter, parse_patient

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "fhir"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    assert data["source"]
    return data


def patient(name: str, **kwargs: Any) -> SourcePatient:
    data = fixture(name)
    return parse_patient(data["resource"], mrn_system=data.get("mrn_system"), **kwargs)


def test_every_fixture_names_its_source_and_parses() -> None:
    names = sorted(p.name for p in FIXTURES.glob("*.json"))
    assert len(names) >= 6
    for name in names:
        data = fixture(name)
        resource = data["resource"]
        parsed = (parse_patient if resource["resourceType"] == "Patient" else parse_encounter)(
            resource
        )
        assert json.loads(json.dumps(parsed.to_dict()))["resource_id"] == resource["id"]


def test_spec_example_keeps_several_names_with_periods() -> None:
    p = patient("spec_patient_example.json", default_region="AU")
    assert [n.use for n in p.names] == ["official", "usual", "maiden"]
    maiden = p.names[2]
    assert maiden.family_folded == "windsor" and maiden.period and maiden.period.end == "2002"
    assert p.names[1].given_canonical == ["james"]  # "Jim"
    assert p.deceased is False


def test_spec_example_birth_date_extension_is_kept() -> None:
    p = patient("spec_patient_example.json")
    assert (p.birth_year, p.birth_month, p.birth_day) == (1974, 12, 25)
    birth_time = p.primitive_extensions["_birthDate"]["extension"][0]
    assert birth_time["valueDateTime"] == "1974-12-25T14:35:45-05:00"
    again = SourcePatient.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again.primitive_extensions == p.primitive_extensions


def test_spec_example_telecom_with_and_without_values() -> None:
    p = patient("spec_patient_example.json", default_region="AU")
    assert [t.value_normalized for t in p.telecom] == [
        "",
        "+61355556473",
        "+61334105613",
        "+61355558834",
    ]
    assert [t.rank for t in p.telecom] == [None, 1, 2, None]
    assert p.telecom[3].use == "old" and p.telecom[3].period is not None


def test_spec_example_contact_is_carried_whole() -> None:
    p = patient("spec_patient_example.json")
    contact = p.contacts[0]
    assert contact["relationship"][0]["coding"][0]["code"] == "N"
    assert contact["name"]["_family"]["extension"][0]["valueString"] == "VV"
    assert p.managing_organization == {"reference": "Organization/1"}


def test_deceased_date_time() -> None:
    p = patient("spec_patient_deceased.json")
    assert (p.deceased, p.deceased_datetime) == (True, "2015-02-14T13:42:00+10:00")


def test_contained_us_core_and_unknown_extensions() -> None:
    p = patient("spec_patient_contained_extensions.json")
    assert p.race is not None and p.race["extension"][0]["valueCoding"]["code"] == "2106-3"
    assert p.ethnicity is not None and p.birth_sex == "F"
    assert [e["url"] for e in p.extensions] == [
        "https://ehr.example.org/fhir/StructureDefinition/favourite-colour"
    ]
    assert p.modifier_extensions[0]["valueBoolean"] is True
    assert p.general_practitioner == [{"reference": "#gp1"}]
    assert p.managing_organization == {"reference": "#org1"}
    assert p.multiple_birth == 2
    assert [(lang["code"], lang["preferred"]) for lang in p.languages] == [
        ("es", True),
        ("en", None),
    ]
    assert [i.kind for i in p.identifiers] == ["ssn", "drivers-license", "passport", "member-id"]


def test_epic_identifiers_and_telecom() -> None:
    p = patient("epic_patient.json")
    mrn = [i for i in p.identifiers if i.kind == "mrn"]
    assert [(i.value, i.system) for i in mrn] == [
        ("203713", "urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14")
    ]
    ssn = next(i for i in p.identifiers if i.kind == "ssn")
    assert ssn.valid is False  # "xxx-xx-0001" is masked, never a match key
    assert len(p.identifiers) == 9  # every identifier survives, classified or not
    assert [t.value_normalized for t in p.telecom] == [
        "+14695555555",
        "+14698888888",
        "knixontestemail@epic.com",
    ]
    assert p.telecom[2].rank == 1
    assert [e["url"].rsplit("/", 1)[-1] for e in p.extensions] == [
        "legal-sex",
        "sex-for-clinical-use",
    ]
    assert [a.use for a in p.addresses] == ["old", "home"]  # old addresses are kept
    assert p.addresses[0].line_normalized == "3268 w johnson st apt 117"


def test_oracle_health_identifiers_telecom_and_names() -> None:
    p = patient("oracle_health_patient.json")
    assert (p.version_id, p.last_updated) == ("32", "2024-03-11T16:10:25.000Z")
    assert [i.kind for i in p.identifiers] == ["mrn", "other"]
    assert p.identifiers[0].system is None and p.identifiers[0].type_code == "MR"
    assert p.telecom[0].value_normalized == "+18165555555"
    assert p.telecom[1].value_normalized == "nancy.smart@example.com"
    official, maiden = p.names
    assert (official.family_folded, official.given_folded, official.family_first) == (
        "smart",
        ["nancy"],
        False,
    )
    assert maiden.use == "maiden" and maiden.period and maiden.period.end
    assert p.addresses[0].postal_normalized == "64105"
    assert "_birthDate" in p.primitive_extensions


def test_spec_encounter() -> None:
    raw = fixture("spec_encounter_example.json")["resource"]
    e = parse_encounter(raw)
    assert (e.patient_id, e.status) == ("example", "finished")
    assert e.class_code is not None and e.class_code.code == "HH"
    assert [t.code for t in e.types] == ["270427003"]
    assert [r.display for r in e.reasons] == ["Follow-up of a fall at home"]
    assert e.period is not None and e.period.start == "2015-01-17T16:00:00+10:00"
    assert e.locations[0]["location"]["reference"] == "#home"
    assert e.participants[0]["individual"]["reference"] == "Practitioner/example"
    assert e.service_provider == {"reference": "Organization/f001"}
    assert e.identifiers[0].value_normalized == "V1451"


@pytest.mark.parametrize(
    ("reference", "patient_id"),
    [
        ({"reference": "Patient/123"}, "123"),
        ({"reference": "https://ehr.example.org/fhir/Patient/123/_history/2"}, "123"),
        ({"reference": "Patient/123", "type": "Patient"}, "123"),
        ({"reference": "Group/7"}, None),
        ({"reference": "urn:uuid:1b7f3c8e"}, None),
        ({"reference": "SomePatient/1"}, None),
        ({"display": "no reference"}, None),
    ],
)
def test_encounter_subject_reference(reference: dict, patient_id: str | None) -> None:
    raw = {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"}}
    assert parse_encounter({**raw, "subject": reference}).patient_id == patient_id
