"""``_summary`` (true, text, data) and ``_elements``, on searches and on reads."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.patient import Patient

from tests.gateway.conftest import fhir_get, patient_resource

Headers = dict[str, str]
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
PATIENT_SUMMARY = {
    "resourceType",
    "id",
    "meta",
    "active",
    "identifier",
    "name",
    "telecom",
    "gender",
    "birthDate",
    "address",
}


@pytest.fixture
def person(add_patient: Callable[..., str]) -> str:
    resource = patient_resource(family="Summers", mrn="MRN-1")
    resource["text"] = {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">S</div>',
    }
    resource["communication"] = [{"language": {"text": "English"}}]
    resource["_birthDate"] = {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}
    resource["telecom"] = [{"system": "phone", "value": "555-0100"}]
    resource["address"] = [{"city": "Springfield"}]
    return add_patient(resource)


def test_summary_true_keeps_the_summary_elements(
    client: TestClient, headers: Headers, person: str
) -> None:
    full = fhir_get(client, headers, f"/fhir/Patient/{person}")
    assert {"text", "communication"} <= set(full)
    for url in (
        f"/fhir/Patient/{person}?_summary=true",
        f"/fhir/Patient?_id={person}&_summary=true",
    ):
        body = fhir_get(client, headers, url)
        resource = body if body["resourceType"] == "Patient" else body["entry"][0]["resource"]
        # A kept primitive keeps its extensions (_birthDate); text and communication go.
        assert set(resource) == PATIENT_SUMMARY | {"_birthDate"}, url
        assert resource["meta"]["tag"][-1] == SUBSETTED
        Patient.model_validate(resource)
    searched = fhir_get(client, headers, f"/fhir/Patient?_id={person}&_summary=true")
    assert "_summary=true" in searched["link"][0]["url"]
    Bundle.model_validate(searched)


def test_summary_text_and_data(
    client: TestClient,
    headers: Headers,
    person: str,
    add_encounter: Callable[..., int],
) -> None:
    text = fhir_get(client, headers, f"/fhir/Patient/{person}?_summary=text")
    assert set(text) == {"resourceType", "id", "meta", "text"}
    data = fhir_get(client, headers, f"/fhir/Patient/{person}?_summary=data")
    full = fhir_get(client, headers, f"/fhir/Patient/{person}")
    assert set(data) == set(full) - {"text"} and data["meta"]["tag"][-1] == SUBSETTED
    assert fhir_get(client, headers, f"/fhir/Patient/{person}?_summary=false") == full
    # Encounter: class and status are mandatory (1..1), so text keeps them.
    encounter = add_encounter(person)
    kept = fhir_get(client, headers, f"/fhir/Encounter/{encounter}?_summary=text")
    assert set(kept) == {"resourceType", "id", "meta", "status", "class"}
    Encounter.model_validate(kept)
    summary = fhir_get(client, headers, f"/fhir/Encounter?_id={encounter}&_summary=true")
    resource = summary["entry"][0]["resource"]
    assert {"status", "class", "subject", "identifier"} <= set(resource)
    assert "period" not in resource  # Encounter.period is not a summary element
    assert fhir_get(client, headers, f"/fhir/Encounter/{encounter}?_elements=period")["period"]


def test_elements_on_reads_and_what_is_refused(
    client: TestClient, headers: Headers, person: str
) -> None:
    slim = fhir_get(client, headers, f"/fhir/Patient/{person}?_elements=birthDate,gender")
    assert set(slim) == {"resourceType", "id", "meta", "birthDate", "_birthDate", "gender"}
    version = fhir_get(client, headers, f"/fhir/Patient/{person}")["meta"]["versionId"]
    vread = fhir_get(client, headers, f"/fhir/Patient/{person}/_history/{version}?_elements=gender")
    assert set(vread) == {"resourceType", "id", "meta", "gender"}
    # The hot path without either parameter sends the stored text unchanged.
    assert "communication" in fhir_get(client, headers, f"/fhir/Patient/{person}?x=1")
    for url in (
        f"/fhir/Patient/{person}?_summary=count",
        f"/fhir/Patient/{person}?_summary=everything",
        f"/fhir/Patient/{person}?_summary=true&_elements=name",
        "/fhir/Patient?_summary=true&_elements=name",
        f"/fhir/Patient/{person}?_elements=name.given",
    ):
        outcome = fhir_get(client, headers, url, status=400)
        assert outcome["issue"][0]["expression"][0] in ("_summary", "_elements"), url
