"""The way back from a portal's form: SDC ``$extract`` and ``POST /fhir/QuestionnaireResponse``.

The demo's intake form is pre-filled by ``$populate``, the patient corrects it, and the
portal submits it: the answers become the portal source's record of the person, pinned to
the golden record, whose contact data then comes from what the patient confirmed.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from rich.console import Console
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from askonce.demo import INTAKE_QUESTIONNAIRE, POPULATE_BODY, SUBMIT_BODY, print_demo_access
from connectors import Page
from gateway.auth import Credentials, register_consumer
from gateway.operations.extract import (
    ALLOCATE_ID,
    DEFINITION_EXTRACT,
    DEFINITION_EXTRACT_VALUE,
    OBSERVATION_EXTRACT,
    element_of,
    resource_model,
)
from gateway.operations.questionnaires import StoredForms
from mpi import merge_golden
from store.models import Audit, FormResponse, Link, Outbox, Source, SourceRecord
from sync.pipeline import ingest_page
from sync.retire import remove_source
from sync.sources import SourceSettingsError, checked_settings
from tests.gateway.test_console import sign_in
from tests.sync.helpers import add_source

Headers = dict[str, str]
P = "http://hl7.org/fhir/StructureDefinition/Patient#Patient."
RP = "http://hl7.org/fhir/StructureDefinition/RelatedPerson#RelatedPerson."
SSN = "http://hl7.org/fhir/sid/us-ssn"
PORTAL_CLIENT = "portal-app"
FORM_SCOPES = ("system/Patient.rs", "system/QuestionnaireResponse.crs")
JSON_HEADERS = {"Content-Type": "application/fhir+json"}


def ehr_patient(rid: str, family: str, given: str, birth: str, phone: str, **extra: Any) -> dict:
    return {
        "resourceType": "Patient",
        "id": rid,
        "meta": {"lastUpdated": "2026-01-10T10:00:00Z"},
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth,
        "telecom": [{"system": "phone", "value": phone, "use": "mobile"}],
        "address": [{"line": ["12 Old Road"], "city": "Oakland", "postalCode": "94601"}],
        **extra,
    }


@dataclass
class World:
    ehr: int
    portal: int
    ada: str
    ben: str


def golden_of(session: Session, source_id: int, resource_id: str) -> str:
    return session.scalars(
        select(Link.golden_id)
        .join(SourceRecord, SourceRecord.id == Link.source_record_id)
        .where(SourceRecord.source_id == source_id, SourceRecord.resource_id == resource_id)
    ).one()


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> World:
    ehr = add_source(session_factory, "ehr")
    settings = checked_settings(
        "portal",
        "https://portal.example",
        auth=None,
        schedule=None,
        resource_types=None,
        config={"client_id": PORTAL_CLIENT},
    )
    portal = add_source(
        session_factory,
        "portal",
        kind="portal",
        base_url=settings.url,
        config=settings.config,
        resource_types=settings.resource_types,
    )
    with session_factory() as session:
        ingest_page(
            session,
            ehr,
            Page(
                "Patient",
                [
                    ehr_patient(
                        "a1",
                        "Okafor",
                        "Ada",
                        "1980-04-02",
                        "+1 415 555 0101",
                        identifier=[{"system": SSN, "value": "234-56-7812"}],
                    ),
                    ehr_patient("b1", "Brennan", "Ben", "1955-11-30", "+1 415 555 0199"),
                ],
                None,
            ),
        )
        session.commit()
        return World(ehr, portal, golden_of(session, ehr, "a1"), golden_of(session, ehr, "b1"))


@pytest.fixture
def portal_headers(auth_for: Callable[..., Headers]) -> Headers:
    return {**auth_for(*FORM_SCOPES, client_id=PORTAL_CLIENT), **JSON_HEADERS}


def demo_form() -> dict[str, Any]:
    return json.loads(INTAKE_QUESTIONNAIRE.read_text(encoding="utf-8"))


def populated(client: TestClient, headers: Headers, golden_id: str) -> dict[str, Any]:
    """The demo form filled from the golden record, as ``$populate`` returns it."""
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "questionnaire", "resource": demo_form()},
            {"name": "subject", "valueReference": {"reference": f"Patient/{golden_id}"}},
        ],
    }
    answer = client.post("/fhir/Questionnaire/$populate", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    return next(p["resource"] for p in answer.json()["parameter"] if p["name"] == "response")


def items_of(response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    stack = list(response.get("item", []))
    while stack:
        item = stack.pop()
        found.setdefault(item["linkId"], item)
        stack.extend(item.get("item", []))
    return found


def answer(response: dict[str, Any], link_id: str, *values: dict[str, Any]) -> None:
    item = items_of(response)[link_id]
    if values:
        item["answer"] = list(values)
    else:
        item.pop("answer", None)


def completed(response: dict[str, Any], form: dict[str, Any] | None = None) -> dict[str, Any]:
    """The response as the portal submits it: completed, its form contained."""
    out = copy.deepcopy(response)
    form = copy.deepcopy(form or demo_form())
    form["id"] = "intake"
    out["status"] = "completed"
    out["contained"] = [form]
    out["questionnaire"] = "#intake"
    return out


def extract(client: TestClient, headers: Headers, body: Any) -> tuple[list[dict], list[dict]]:
    answer_ = client.post("/fhir/QuestionnaireResponse/$extract", json=body, headers=headers)
    assert answer_.status_code == 200, answer_.text
    out = {p["name"]: p["resource"] for p in answer_.json()["parameter"]}
    bundle = out["return"]
    Bundle.model_validate(bundle)
    assert bundle["type"] == "transaction"
    issues = out.get("issues", {"issue": []})
    if "issues" in out:
        OperationOutcome.model_validate(issues)
    return bundle["entry"], issues["issue"]


# --- $extract -----------------------------------------------------------------------------


def test_the_demo_form_extracts_to_the_patient_it_was_filled_from(
    client: TestClient, portal_headers: Headers, world: World
) -> None:
    response = populated(client, portal_headers, world.ada)
    answer(response, "contact.mobile", {"valueString": "+1 415 555 0177"})
    answer(response, "contact.email", {"valueString": "ada@example.org"})
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "questionnaire-response", "resource": {**response, "status": "completed"}},
            {"name": "questionnaire", "resource": demo_form()},
        ],
    }
    entries, issues = extract(client, portal_headers, body)
    assert issues == []
    assert len(entries) == 1
    entry = entries[0]
    assert entry["request"] == {"method": "POST", "url": "Patient"}
    assert entry["fullUrl"].startswith("urn:uuid:")
    patient = entry["resource"]
    assert patient["name"] == [{"family": "Okafor", "given": ["Ada"]}]
    assert patient["birthDate"] == "1980-04-02"
    assert patient["gender"] == "female"
    assert patient["telecom"] == [
        {"value": "+1 415 555 0177", "system": "phone", "use": "mobile"},
        {"value": "ada@example.org", "system": "email"},
    ]
    assert patient["address"] == [
        {"line": ["12 Old Road"], "city": "Oakland", "postalCode": "94601"}
    ]
    # A bare QuestionnaireResponse whose form is contained extracts the same.
    bare_entries, _ = extract(client, portal_headers, completed(response))
    assert bare_entries[0]["resource"] == patient


def fixed(definition: str, **value: Any) -> dict[str, Any]:
    return {
        "url": DEFINITION_EXTRACT_VALUE,
        "extension": [
            {"url": "definition", "valueUri": definition},
            {"url": "fixed-value", **value},
        ],
    }


def computed(definition: str, expression: str) -> dict[str, Any]:
    return {
        "url": DEFINITION_EXTRACT_VALUE,
        "extension": [
            {"url": "definition", "valueUri": definition},
            {
                "url": "expression",
                "valueExpression": {"language": "text/fhirpath", "expression": expression},
            },
        ],
    }


def extract_on(resource_type: str, **parts: str) -> dict[str, Any]:
    extension = [
        {
            "url": "definition",
            "valueCanonical": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        }
    ]
    extension += [{"url": k, "valueString": v} for k, v in parts.items()]
    return {"url": DEFINITION_EXTRACT, "extension": extension}


def test_groups_extract_resources_of_any_type_with_fixed_and_computed_values(
    client: TestClient, portal_headers: Headers
) -> None:
    """The shape of the SDC's own complex definition-based example: a group per resource,
    ids allocated and shared between resources, repeating elements, fixed values."""
    form = {
        "resourceType": "Questionnaire",
        "status": "active",
        "url": "https://clinic.example/Questionnaire/registration",
        "extension": [{"url": ALLOCATE_ID, "valueString": "NewPatientId"}],
        "item": [
            {
                "linkId": "patient",
                "type": "group",
                "extension": [extract_on("Patient", fullUrl="%NewPatientId")],
                "item": [
                    {
                        "linkId": "name",
                        "type": "group",
                        "repeats": True,
                        "definition": P + "name",
                        "extension": [fixed(P + "name.use", valueCode="official")],
                        "item": [
                            {
                                "linkId": "given",
                                "type": "string",
                                "repeats": True,
                                "definition": P + "name.given",
                            },
                            {"linkId": "family", "type": "string", "definition": P + "name.family"},
                        ],
                    },
                    {"linkId": "dob", "type": "date", "definition": P + "birthDate"},
                    {"linkId": "deceased", "type": "boolean", "definition": P + "deceased[x]"},
                    {
                        "linkId": "ssn",
                        "type": "string",
                        "definition": P + "identifier.value",
                        "extension": [
                            fixed(P + "identifier.system", valueUri=SSN),
                            fixed(P + "identifier.type", valueCodeableConcept={"text": "SSN"}),
                        ],
                    },
                    {"linkId": "marital", "type": "choice", "definition": P + "maritalStatus"},
                ],
            },
            {
                "linkId": "contacts",
                "type": "group",
                "repeats": True,
                "extension": [
                    extract_on("RelatedPerson"),
                    computed(RP + "patient.reference", "%NewPatientId"),
                ],
                "item": [
                    {"linkId": "contact-name", "type": "string", "definition": RP + "name.text"},
                    {
                        "linkId": "contact-phone",
                        "type": "string",
                        "definition": RP + "telecom.value",
                        "extension": [fixed(RP + "telecom.system", valueCode="phone")],
                    },
                ],
            },
        ],
    }
    response = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": form["url"],
        "item": [
            {
                "linkId": "patient",
                "item": [
                    {
                        "linkId": "name",
                        "item": [
                            {
                                "linkId": "given",
                                "answer": [{"valueString": "Mary"}, {"valueString": "Jo"}],
                            },
                            {"linkId": "family", "answer": [{"valueString": "Quinn"}]},
                        ],
                    },
                    {
                        "linkId": "name",
                        "item": [{"linkId": "family", "answer": [{"valueString": "Byrne"}]}],
                    },
                    {"linkId": "dob", "answer": [{"valueDate": "1972-08-09"}]},
                    {"linkId": "deceased", "answer": [{"valueBoolean": False}]},
                    {"linkId": "ssn", "answer": [{"valueString": "987-65-4321"}]},
                    {
                        "linkId": "marital",
                        "answer": [
                            {
                                "valueCoding": {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                    "code": "M",
                                    "display": "Married",
                                }
                            }
                        ],
                    },
                ],
            },
            {
                "linkId": "contacts",
                "item": [
                    {"linkId": "contact-name", "answer": [{"valueString": "Sean Quinn"}]},
                    {"linkId": "contact-phone", "answer": [{"valueString": "555-0101"}]},
                ],
            },
            {
                "linkId": "contacts",
                "item": [{"linkId": "contact-name", "answer": [{"valueString": "Ann Byrne"}]}],
            },
        ],
    }
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "questionnaire-response", "resource": response},
            {"name": "questionnaire", "resource": form},
        ],
    }
    entries, issues = extract(client, portal_headers, body)
    assert issues == []
    patient, first, second = entries
    assert patient["fullUrl"].startswith("urn:uuid:")
    assert patient["resource"] == {
        "resourceType": "Patient",
        "name": [
            {"use": "official", "given": ["Mary", "Jo"], "family": "Quinn"},
            {"use": "official", "family": "Byrne"},
        ],
        "birthDate": "1972-08-09",
        "deceasedBoolean": False,
        "identifier": [{"value": "987-65-4321", "system": SSN, "type": {"text": "SSN"}}],
        "maritalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                    "code": "M",
                    "display": "Married",
                }
            ],
            "text": "Married",
        },
    }
    # Each repetition of the contacts group is its own RelatedPerson, pointing at the
    # Patient by the id the form allocated.
    assert first["request"] == {"method": "POST", "url": "RelatedPerson"}
    assert first["resource"]["patient"] == {"reference": patient["fullUrl"]}
    assert first["resource"]["name"] == [{"text": "Sean Quinn"}]
    assert first["resource"]["telecom"] == [{"value": "555-0101", "system": "phone"}]
    assert second["resource"]["name"] == [{"text": "Ann Byrne"}]
    assert second["resource"]["patient"] == {"reference": patient["fullUrl"]}
    assert "telecom" not in second["resource"]


def test_what_cannot_be_extracted_is_a_warning_that_quotes_no_answer(
    client: TestClient, portal_headers: Headers
) -> None:
    form = {
        "resourceType": "Questionnaire",
        "status": "active",
        "extension": [extract_on("Patient")],
        "item": [
            {"linkId": "dob", "type": "string", "definition": P + "birthDate"},
            {"linkId": "sex", "type": "string", "definition": P + "gender"},
            {"linkId": "rid", "type": "string", "definition": P + "id"},
            {"linkId": "elsewhere", "type": "string", "definition": RP + "name.text"},
            {"linkId": "nothing", "type": "string", "definition": P + "favouriteColour"},
            {"linkId": "twice", "type": "date", "repeats": True, "definition": P + "birthDate"},
            {
                "linkId": "weight",
                "type": "decimal",
                "extension": [{"url": OBSERVATION_EXTRACT, "valueBoolean": True}],
            },
        ],
    }
    secret = "Zebulon-7731"
    response = {
        "resourceType": "QuestionnaireResponse",
        "status": "in-progress",
        "contained": [{**form, "id": "f"}],
        "questionnaire": "#f",
        "item": [
            {"linkId": "dob", "answer": [{"valueString": secret}]},
            {"linkId": "sex", "answer": [{"valueString": "not-a-gender"}]},
            {"linkId": "rid", "answer": [{"valueString": "has spaces!"}]},
            {"linkId": "elsewhere", "answer": [{"valueString": secret}]},
            {"linkId": "nothing", "answer": [{"valueString": secret}]},
            {
                "linkId": "twice",
                "answer": [{"valueDate": "1990-01-01"}, {"valueDate": "1991-01-01"}],
            },
            {"linkId": "weight", "answer": [{"valueDecimal": 71.5}]},
            {"linkId": "unknown", "answer": [{"valueString": secret}]},
        ],
    }
    entries, issues = extract(client, portal_headers, response)
    # An invalid id makes the Patient invalid: it is left out, and the issues say why.
    assert entries == []
    by_item = {(i["expression"][0], i["code"]) for i in issues}
    assert ("Questionnaire", "incomplete") in by_item
    assert ("Questionnaire.item.where(linkId = 'dob')", "value") in by_item
    assert ("Questionnaire.item.where(linkId = 'elsewhere')", "invalid") in by_item
    assert ("Questionnaire.item.where(linkId = 'nothing')", "invalid") in by_item
    assert ("Questionnaire.item.where(linkId = 'twice')", "value") in by_item
    assert ("Questionnaire.item.where(linkId = 'weight')", "not-supported") in by_item
    assert ("Questionnaire.item.where(linkId = 'unknown')", "processing") in by_item
    invalid = [i for i in issues if i["expression"][0] == "Patient.id"]
    assert invalid and invalid[0]["code"] == "invalid"
    assert secret not in json.dumps(issues) and "has spaces" not in json.dumps(issues)


def test_extract_refuses_malformed_requests(
    client: TestClient, portal_headers: Headers, world: World
) -> None:
    url = "/fhir/QuestionnaireResponse/$extract"
    response = {"resourceType": "QuestionnaireResponse", "status": "completed"}

    def post(body: Any) -> tuple[int, str]:
        answer_ = client.post(url, json=body, headers=portal_headers)
        assert answer_.headers["content-type"].startswith("application/fhir+json")
        return answer_.status_code, answer_.text

    assert post({"resourceType": "Patient"})[0] == 400
    assert post({"resourceType": "Parameters", "parameter": []})[0] == 400
    twice = {"name": "questionnaire-response", "resource": response}
    assert post({"resourceType": "Parameters", "parameter": [twice, twice]})[0] == 400
    status, text = post(response)
    assert status == 422 and "is not stored here" in text
    status, text = post({**response, "authored": "yesterday"})
    assert status == 422 and "QuestionnaireResponse.authored" in text
    other = {**demo_form(), "url": "https://elsewhere.example/Questionnaire/other"}
    mismatch = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "questionnaire-response",
                "resource": {**response, "questionnaire": demo_form()["url"]},
            },
            {"name": "questionnaire", "resource": other},
        ],
    }
    assert post(mismatch)[0] == 422
    no_auth = client.post(url, json=response, headers=JSON_HEADERS)
    assert no_auth.status_code == 401


def test_the_element_model_comes_from_fhir_resources() -> None:
    patient = resource_model("Patient")
    name = element_of(patient, "name")
    assert name is not None and name.many and name.kind == "HumanName"
    given = element_of(name.model, "given")
    assert given is not None and given.many and given.kind == "String"
    gender = element_of(patient, "gender")
    assert gender is not None and not gender.many and gender.kind == "Code"
    marital = element_of(patient, "maritalStatus")
    assert marital is not None and marital.kind == "CodeableConcept"
    assert element_of(patient, "deceasedBoolean") is not None
    assert element_of(patient, "nonsense") is None
    assert resource_model("NotAResource") is None
    assert resource_model("HumanName") is None  # a datatype, not a resource


# --- submitting a form ----------------------------------------------------------------------


def submit(client: TestClient, headers: Headers, body: Any, **extra: str) -> Any:
    return client.post("/fhir/QuestionnaireResponse", json=body, headers={**headers, **extra})


def submit_mobile(
    client: TestClient, headers: Headers, golden_id: str, number: str
) -> dict[str, Any]:
    """The demo form filled for ``golden_id``, its mobile number changed, submitted (201):
    the stored QuestionnaireResponse."""
    response = populated(client, headers, golden_id)
    answer(response, "contact.mobile", {"valueString": number})
    created = submit(client, headers, completed(response))
    assert created.status_code == 201, created.text
    return dict(created.json())


def read_golden(client: TestClient, headers: Headers, golden_id: str) -> dict[str, Any]:
    answer_ = client.get(f"/fhir/Patient/{golden_id}", headers=headers)
    assert answer_.status_code == 200, answer_.text
    return answer_.json()


def phones(patient: dict[str, Any]) -> list[str]:
    """The phone numbers of a Patient, as their last ten digits (the golden record keeps
    each as its source wrote it)."""
    return [
        re.sub(r"\D", "", t["value"])[-10:]
        for t in patient.get("telecom", [])
        if t.get("system") == "phone"
    ]


def test_a_submitted_form_reaches_the_golden_record_as_what_the_patient_confirmed(
    client: TestClient,
    portal_headers: Headers,
    world: World,
    session_factory: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = read_golden(client, portal_headers, world.ada)
    assert phones(before) == ["4155550101"]
    response = populated(client, portal_headers, world.ada)
    answer(response, "contact.mobile", {"valueString": "(415) 555-0177"})
    answer(response, "address.line", {"valueString": "98 New Street"})
    answer(response, "address.city", {"valueString": "Berkeley"})
    answer(response, "address.postal-code", {"valueString": "94704"})
    caplog.set_level(logging.DEBUG)
    created = submit(client, portal_headers, completed(response))
    assert created.status_code == 201, created.text
    stored = created.json()
    QuestionnaireResponse.model_validate(stored)
    form_id = stored["id"]
    assert created.headers["location"].endswith(f"/fhir/QuestionnaireResponse/{form_id}/_history/1")
    assert created.headers["etag"] == 'W/"1"'
    assert stored["meta"]["versionId"] == "1"
    client.app.state.audit.flush()  # type: ignore[attr-defined]

    after = read_golden(client, portal_headers, world.ada)
    # The patient's own phone number and address come first; the EHR's stay known.
    assert phones(after)[0] == "4155550177"
    assert "4155550101" in phones(after)
    assert after["address"][0]["city"] == "Berkeley"
    # The form's name (no use) is the EHR's official name, not a second one.
    assert [(n["family"], n["given"]) for n in after["name"]] == [("Okafor", ["Ada"])]
    assert after["meta"]["versionId"] != before["meta"]["versionId"]
    with session_factory() as session:
        record = session.scalars(
            select(SourceRecord).where(SourceRecord.source_id == world.portal)
        ).one()
        assert record.resource_id == world.ada
        link = session.scalars(select(Link).where(Link.source_record_id == record.id)).one()
        assert (link.golden_id, link.method) == (world.ada, "MANUAL")
        events = session.scalars(
            select(Outbox.event_type).where(Outbox.aggregate_id == world.ada)
        ).all()
        assert "patient.updated" in events
        form = session.get(FormResponse, form_id)
        assert form is not None
        assert (form.golden_id, form.client_id, form.source_record_id) == (
            world.ada,
            PORTAL_CLIENT,
            record.id,
        )
        audit = session.scalars(select(Audit).where(Audit.action == "form-submit")).one()
        assert (audit.outcome, audit.detail["ids"]) == (201, [world.ada])
    # Nothing the patient typed reaches the logs.
    logged = "\n".join(r.getMessage() + json.dumps(r.__dict__, default=str) for r in caplog.records)
    for value in ("555-0177", "5550177", "New Street", "Berkeley", "Okafor"):
        assert value not in logged

    read = client.get(f"/fhir/QuestionnaireResponse/{form_id}", headers=portal_headers)
    assert read.status_code == 200
    assert read.json() == stored
    assert client.get("/fhir/QuestionnaireResponse/nope", headers=portal_headers).status_code == 404


def test_a_later_form_updates_the_same_record_element_by_element(
    client: TestClient,
    portal_headers: Headers,
    world: World,
    session_factory: sessionmaker[Session],
) -> None:
    submit_mobile(client, portal_headers, world.ada, "+1 415 555 0177")
    # A second form asks only for the address.
    form = demo_form()
    form["item"] = [i for i in form["item"] if i["linkId"] in ("address",)]
    later = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "subject": {"reference": f"Patient/{world.ada}"},
        "item": [
            {
                "linkId": "address",
                "item": [
                    {"linkId": "address.line", "answer": [{"valueString": "5 Bay Lane"}]},
                    {"linkId": "address.city", "answer": [{"valueString": "Alameda"}]},
                ],
            }
        ],
    }
    second = submit(
        client, portal_headers, completed(later, form), Prefer="return=OperationOutcome"
    )
    assert second.status_code == 201, second.text
    assert second.json()["resourceType"] == "OperationOutcome"
    assert f"Patient/{world.ada}" in second.json()["issue"][0]["diagnostics"]
    with session_factory() as session:
        records = session.scalars(
            select(SourceRecord).where(SourceRecord.source_id == world.portal)
        ).all()
        assert len(records) == 1
        raw = records[0].raw
        assert [t["value"] for t in raw["telecom"] if t["system"] == "phone"] == ["+1 415 555 0177"]
        assert raw["address"] == [{"line": ["5 Bay Lane"], "city": "Alameda"}]
        assert session.scalar(select(func.count()).select_from(FormResponse)) == 2
    golden = read_golden(client, portal_headers, world.ada)
    assert phones(golden)[0] == "4155550177"
    assert golden["address"][0]["city"] == "Alameda"

    # The same answers again change nothing.
    version = golden["meta"]["versionId"]
    again = submit(client, portal_headers, completed(later, form), Prefer="return=OperationOutcome")
    assert again.status_code == 201
    assert "unchanged" in again.json()["issue"][0]["diagnostics"]
    assert read_golden(client, portal_headers, world.ada)["meta"]["versionId"] == version
    minimal = submit(client, portal_headers, completed(later, form), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.content == b""


def nothing_written(session_factory: sessionmaker[Session], world: World) -> bool:
    """No form kept and no record of the portal's: a refused form left nothing behind."""
    with session_factory() as session:
        forms = session.scalar(select(func.count()).select_from(FormResponse))
        records = session.scalar(
            select(func.count())
            .select_from(SourceRecord)
            .where(SourceRecord.source_id == world.portal)
        )
    return forms == records == 0


def test_a_form_that_describes_someone_else_is_refused_and_leaves_nothing(
    client: TestClient,
    portal_headers: Headers,
    world: World,
    session_factory: sessionmaker[Session],
) -> None:
    response = populated(client, portal_headers, world.ada)
    # Ben's details typed into Ada's form (a parent on the wrong account).
    answer(response, "about.family", {"valueString": "Brennan"})
    answer(response, "about.given", {"valueString": "Ben"})
    answer(response, "about.birth-date", {"valueDate": "1955-11-30"})
    answer(response, "about.sex", {"valueCoding": {"code": "male"}})
    refused = submit(client, portal_headers, completed(response))
    assert refused.status_code == 422, refused.text
    outcome = refused.json()
    assert outcome["issue"][0]["code"] == "business-rule"
    assert "Brennan" not in refused.text and "1955" not in refused.text
    assert nothing_written(session_factory, world)
    # A corrected spelling of the patient's own name is taken in.
    response = populated(client, portal_headers, world.ada)
    answer(response, "about.given", {"valueString": "Adah"})
    assert submit(client, portal_headers, completed(response)).status_code == 201


def test_a_conflicting_ssn_is_refused(
    client: TestClient, portal_headers: Headers, world: World
) -> None:
    form = demo_form()
    form["item"].append(
        {
            "linkId": "ssn",
            "type": "string",
            "definition": P + "identifier.value",
            "extension": [fixed(P + "identifier.system", valueUri=SSN)],
        }
    )
    response = populated(client, portal_headers, world.ada)
    response["item"].append({"linkId": "ssn", "answer": [{"valueString": "345-67-8123"}]})
    refused = submit(client, portal_headers, completed(response, form))
    assert refused.status_code == 422
    assert "ssn" in refused.json()["issue"][0]["diagnostics"]


def test_form_submissions_are_refused_without_a_portal_source_scope_or_subject(
    client: TestClient,
    portal_headers: Headers,
    auth_for: Callable[..., Headers],
    world: World,
    session_factory: sessionmaker[Session],
) -> None:
    response = populated(client, portal_headers, world.ada)
    body = completed(response)
    other_client = {**auth_for(*FORM_SCOPES, client_id="crm"), **JSON_HEADERS}
    denied = submit(client, other_client, body)
    assert denied.status_code == 403 and "--kind portal" in denied.text
    read_only = {**auth_for("system/Patient.rs", client_id=PORTAL_CLIENT), **JSON_HEADERS}
    assert submit(client, read_only, body).status_code == 403
    assert submit(client, portal_headers, {**body, "status": "in-progress"}).status_code == 422
    unknown = {**body, "subject": {"reference": "Patient/no-such-person"}}
    assert submit(client, portal_headers, unknown).status_code == 422
    assert submit(client, portal_headers, {**body, "subject": None}).status_code == 400
    no_form = {k: v for k, v in body.items() if k not in ("contained", "questionnaire")}
    assert submit(client, portal_headers, no_form).status_code == 422
    plain = completed(response, {k: v for k, v in demo_form().items() if k != "extension"})
    not_extractable = submit(client, portal_headers, plain)
    assert not_extractable.status_code == 422 and "exactly one Patient" in not_extractable.text
    assert submit(client, portal_headers, {"resourceType": "Patient"}).status_code == 400
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(FormResponse)) == 0
        # A disabled portal source receives nothing either.
        source = session.get(Source, world.portal)
        assert source is not None
        source.enabled = False
        session.commit()
    assert submit(client, portal_headers, body).status_code == 403


def test_a_form_about_a_merged_record_reaches_its_survivor(
    client: TestClient,
    portal_headers: Headers,
    world: World,
    session_factory: sessionmaker[Session],
) -> None:
    response = populated(client, portal_headers, world.ada)
    with session_factory() as session:
        merge_golden(session, world.ada, world.ben, actor="steward")
        session.commit()
    answer(response, "contact.mobile", {"valueString": "+1 415 555 0188"})
    # The form's identity (Ada's) is compared with the survivor's records, Ada's among them.
    created = submit(client, portal_headers, completed(response))
    assert created.status_code == 201, created.text
    with session_factory() as session:
        form = session.scalars(select(FormResponse)).one()
        assert form.golden_id == world.ben


def test_a_portal_source_needs_its_client_and_takes_patients_only() -> None:
    def settings(config: dict[str, Any], types: list[str] | None = None) -> Any:
        return checked_settings(
            "portal",
            "https://portal.example",
            auth=None,
            schedule=None,
            resource_types=types,
            config=config,
        )

    stored = settings({"client_id": " portal-app "})
    assert stored.config == {"client_id": "portal-app", "patient_confirmed": True}
    assert stored.resource_types == ["Patient"]
    assert (
        settings({"client_id": "p", "patient_confirmed": False}).config["patient_confirmed"]
        is False
    )
    with pytest.raises(SourceSettingsError, match="client_id"):
        settings({})
    with pytest.raises(SourceSettingsError, match="Patient data only"):
        settings({"client_id": "p"}, ["Patient", "Encounter"])
    with pytest.raises(SourceSettingsError, match="push-only"):
        checked_settings(
            "portal",
            "https://portal.example",
            auth=None,
            schedule="1h",
            resource_types=None,
            config={"client_id": "p"},
        )


def test_the_capability_statement_declares_the_form_round_trip(
    client: TestClient, headers: Headers
) -> None:
    statement = client.get("/fhir/metadata").json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    form = resources["QuestionnaireResponse"]
    assert {i["code"] for i in form["interaction"]} == {"create", "read", "search-type"}
    assert {p["name"] for p in form["searchParam"]} >= {"subject", "questionnaire", "authored"}
    assert form["operation"] == [
        {
            "name": "extract",
            "definition": "http://hl7.org/fhir/uv/sdc/OperationDefinition/QuestionnaireResponse-extract",
        }
    ]


def test_the_demo_prints_commands_that_submit_a_form_back(
    client: TestClient, portal_headers: Headers, world: World
) -> None:
    """The demo's printed round trip: $populate's output, through the printed Python, is a
    submission the server takes in (and the console prints both bodies unmangled)."""
    console = Console(record=True, width=400)
    print_demo_access(
        console,
        Credentials(1, "demo", PORTAL_CLIENT, "secret", list(FORM_SCOPES)),
        "http://127.0.0.1:8000",
    )
    printed = console.export_text()
    assert SUBMIT_BODY in printed and POPULATE_BODY in printed
    filled = client.post(
        "/fhir/Questionnaire/$populate",
        content=subprocess.run(
            [sys.executable, "-c", POPULATE_BODY, str(INTAKE_QUESTIONNAIRE), world.ada],
            check=True,
            capture_output=True,
            text=True,
        ).stdout,
        headers=portal_headers,
    )
    assert filled.status_code == 200, filled.text
    body = subprocess.run(
        [sys.executable, "-c", SUBMIT_BODY, str(INTAKE_QUESTIONNAIRE), "+1 415 555 0100"],
        input=filled.text,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    created = submit(client, portal_headers, json.loads(body))
    assert created.status_code == 201, created.text
    assert phones(read_golden(client, portal_headers, world.ada))[0] == "4155550100"


def test_removing_the_portal_source_takes_its_answers_and_forms_away(
    client: TestClient,
    portal_headers: Headers,
    world: World,
    session_factory: sessionmaker[Session],
) -> None:
    submit_mobile(client, portal_headers, world.ada, "+1 415 555 0177")
    assert phones(read_golden(client, portal_headers, world.ada))[0] == "4155550177"
    remove_source(session_factory, world.portal)
    assert phones(read_golden(client, portal_headers, world.ada)) == ["4155550101"]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(FormResponse)) == 0


def test_a_golden_record_without_records_takes_no_form(
    client: TestClient,
    portal_headers: Headers,
    world: World,
    add_patient: Callable[..., str],
    session_factory: sessionmaker[Session],
) -> None:
    """A golden record made without a source record (nothing to pin the form's record to)
    refuses the form instead of letting the record be matched elsewhere."""
    bare = add_patient(family="Okafor", given="Ada", birth_date="1980-04-02")
    response = populated(client, portal_headers, bare)
    refused = submit(client, portal_headers, completed(response))
    assert refused.status_code == 422, refused.text
    assert nothing_written(session_factory, world)


def test_everything_holds_the_forms_of_the_person_for_a_caller_that_may_read_them(
    client: TestClient,
    portal_headers: Headers,
    auth_for: Callable[..., Headers],
    world: World,
    session_factory: sessionmaker[Session],
) -> None:
    form_id = submit_mobile(client, portal_headers, world.ada, "+1 415 555 0177")["id"]
    with session_factory() as session:  # the form follows its person into a merge
        merge_golden(session, world.ada, world.ben, actor="steward")
        session.commit()

    def everything(headers: Headers) -> list[tuple[str, str]]:
        found, url = [], f"/fhir/Patient/{world.ben}/$everything?_count=1"
        while url:
            page = client.get(url, headers=headers)
            assert page.status_code == 200, page.text
            bundle = page.json()
            found += [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]]
            url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
            url = url.replace("http://testserver", "")
        return found

    reader = auth_for("system/Patient.rs", "system/Encounter.rs", "system/QuestionnaireResponse.r")
    types = [t for t, _ in everything(reader)]
    assert ("QuestionnaireResponse", form_id) in everything(reader)
    assert types.index("QuestionnaireResponse") < types.index("Provenance")
    without = everything(auth_for("system/Patient.rs", "system/Encounter.rs"))
    assert "QuestionnaireResponse" not in [t for t, _ in without]


def test_the_console_lists_the_forms_a_patient_submitted(
    client: TestClient,
    portal_headers: Headers,
    world: World,
    session_factory: sessionmaker[Session],
) -> None:
    submit_mobile(client, portal_headers, world.ada, "+1 415 555 0177")
    with session_factory() as session:
        steward = register_consumer(session, "steward", "steward", ["askonce.admin"])
        session.commit()
    sign_in(client, steward)
    page = client.get(f"/console/golden/{world.ada}")
    assert page.status_code == 200
    assert "Forms the patient submitted" in page.text
    assert "New patient intake" in page.text and PORTAL_CLIENT in page.text
    assert "No form yet." in client.get(f"/console/golden/{world.ben}").text


def test_a_portal_finds_what_the_patient_last_confirmed(
    client: TestClient,
    portal_headers: Headers,
    auth_for: Callable[..., Headers],
    world: World,
    session_factory: sessionmaker[Session],
) -> None:
    """``subject`` + ``questionnaire`` + ``_sort=-authored`` + ``_count=1``: whether, and
    when, the patient last answered a form, so that the portal does not ask again."""
    url = demo_form()["url"]
    ids = []
    for n, when in enumerate(("2026-10-01T09:00:00Z", "2026-11-20T09:00:00Z")):
        response = populated(client, portal_headers, world.ada)
        answer(response, "contact.mobile", {"valueString": f"+1 415 555 017{n}"})
        created = submit(client, portal_headers, {**completed(response), "authored": when})
        ids.append(created.json()["id"])

    def search(query: str, headers: Headers = portal_headers) -> Any:
        return client.get(f"/fhir/QuestionnaireResponse?{query}", headers=headers)

    def found(query: str) -> list[str]:
        answer_ = search(query)
        assert answer_.status_code == 200, answer_.text
        Bundle.model_validate(answer_.json())
        return [e["resource"]["id"] for e in answer_.json().get("entry", [])]

    latest = search(f"subject=Patient/{world.ada}&questionnaire={url}&_sort=-authored&_count=1")
    bundle = latest.json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == [ids[1]]
    assert bundle["entry"][0]["resource"]["authored"] == "2026-11-20T09:00:00Z"
    after = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert found(after.split("?", 1)[1]) == [ids[0]]
    assert found(f"patient={world.ada}&_sort=authored") == ids
    assert found(f"questionnaire={url}|1") == found(f"questionnaire={url}") != []
    assert found(f"questionnaire={url}|2") == []
    assert found("questionnaire=https://elsewhere.example/Questionnaire/intake") == []
    assert found("authored=ge2026-11-01") == [ids[1]]
    assert found("authored=lt2026-11") == [ids[0]]
    assert set(found("status=completed")) == set(ids)
    assert found("status=amended") == []
    assert found(f"subject={world.ben}") == []
    assert search("_summary=count").json()["total"] == 2
    # After a merge the forms are the survivor's, and the merged id still finds them.
    with session_factory() as session:
        merge_golden(session, world.ada, world.ben, actor="steward")
        session.commit()
    assert set(found(f"subject={world.ben}")) == set(found(f"subject={world.ada}")) == set(ids)
    strict = client.get(
        "/fhir/QuestionnaireResponse?nonsense=1",
        headers={**portal_headers, "Prefer": "handling=strict"},
    )
    assert strict.status_code == 400
    assert search("subject=Encounter/1").status_code == 400
    assert search("authored=yesterday").status_code == 400
    no_scope = auth_for("system/QuestionnaireResponse.r", client_id=PORTAL_CLIENT)
    assert search("", no_scope).status_code == 403


# --- stored Questionnaires ----------------------------------------------------------------


def test_a_stored_form_is_named_instead_of_sent(
    client: TestClient,
    portal_headers: Headers,
    auth_for: Callable[..., Headers],
    world: World,
) -> None:
    """The portal stores its form once; then $populate takes ``canonical`` or
    ``questionnaireRef``, and $extract and a submission find the form by the response's
    ``questionnaire``, with nothing contained."""
    admin = {**auth_for("system/Questionnaire.cruds"), **JSON_HEADERS}
    form = {**demo_form(), "id": "intake"}
    url, version = form["url"], form["version"]
    created = client.put("/fhir/Questionnaire/intake", json=form, headers=admin)
    assert created.status_code == 201, created.text
    assert created.headers["location"].endswith("/fhir/Questionnaire/intake/_history/1")
    assert created.json()["meta"]["versionId"] == "1"
    replaced = client.put("/fhir/Questionnaire/intake", json=form, headers=admin)
    assert replaced.status_code == 200 and replaced.json()["meta"]["versionId"] == "2"
    assert replaced.headers["etag"] == 'W/"2"'
    read = client.get("/fhir/Questionnaire/intake", headers=admin)
    assert read.status_code == 200 and read.json()["url"] == url

    def populate(named: dict[str, Any]) -> dict[str, Any]:
        body = {
            "resourceType": "Parameters",
            "parameter": [
                named,
                {"name": "subject", "valueReference": {"reference": f"Patient/{world.ada}"}},
            ],
        }
        answer_ = client.post("/fhir/Questionnaire/$populate", json=body, headers=portal_headers)
        assert answer_.status_code == 200, answer_.text
        return next(p["resource"] for p in answer_.json()["parameter"] if p["name"] == "response")

    by_url = populate({"name": "canonical", "valueCanonical": f"{url}|{version}"})
    by_ref = populate(
        {"name": "questionnaireRef", "valueReference": {"reference": "Questionnaire/intake"}}
    )
    assert by_url["item"] == by_ref["item"] == populated(client, portal_headers, world.ada)["item"]
    assert by_url["questionnaire"] == f"{url}|{version}"

    answer(by_url, "contact.mobile", {"valueString": "+1 415 555 0166"})
    response = {**by_url, "status": "completed"}  # nothing contained: the stored form
    entries, _ = extract(client, portal_headers, response)
    assert entries[0]["resource"]["telecom"][0]["value"] == "+1 415 555 0166"
    submitted = submit(client, portal_headers, response)
    assert submitted.status_code == 201, submitted.text
    assert phones(read_golden(client, portal_headers, world.ada))[0] == "4155550166"
    found = client.get(
        f"/fhir/QuestionnaireResponse?questionnaire={url}", headers=portal_headers
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [submitted.json()["id"]]

    # A canonical nothing stored matches is refused, never fetched.
    unknown = {**response, "questionnaire": "https://elsewhere.example/Questionnaire/x"}
    assert submit(client, portal_headers, unknown).status_code == 422
    assert (
        client.post(
            "/fhir/QuestionnaireResponse/$extract", json=unknown, headers=portal_headers
        ).status_code
        == 422
    )


CLINIC = "https://clinic.example/Questionnaire"


def test_stored_forms_are_validated_searched_and_deleted(
    client: TestClient,
    auth_for: Callable[..., Headers],
    session_factory: sessionmaker[Session],
) -> None:
    admin = {**auth_for("system/Questionnaire.cruds"), **JSON_HEADERS}
    base = {"resourceType": "Questionnaire", "status": "active", "item": []}
    for form_id, url, version, status in (
        ("a", f"{CLINIC}/a", "1", "retired"),
        ("a2", f"{CLINIC}/a", "2", "active"),
        ("b", f"{CLINIC}/b", None, "draft"),
    ):
        body = {**base, "id": form_id, "url": url, "status": status}
        if version:
            body["version"] = version
        assert (
            client.put(f"/fhir/Questionnaire/{form_id}", json=body, headers=admin).status_code
            == 201
        )

    def ids(query: str) -> list[str]:
        answer_ = client.get(f"/fhir/Questionnaire?{query}", headers=admin)
        assert answer_.status_code == 200, answer_.text
        return sorted(e["resource"]["id"] for e in answer_.json().get("entry", []))

    assert ids(f"url={CLINIC}/a") == ["a", "a2"]
    assert ids(f"url={CLINIC}/a&version=1") == ["a"]
    assert ids("status=draft") == ["b"]
    assert ids("_id=a,b") == ["a", "b"]
    assert ids("_lastUpdated=ge2020-01-01") == ["a", "a2", "b"]
    # A bare canonical resolves to the active version.
    with session_factory() as session:
        forms = StoredForms(session)
        assert (forms.by_canonical(f"{CLINIC}/a") or {}).get("id") == "a2"
        assert (forms.by_canonical(f"{CLINIC}/a|1") or {}).get("id") == "a"
        assert forms.by_canonical(f"{CLINIC}/c") is None
    # Refusals: an id that is not the URL's, a body that is not a valid Questionnaire,
    # an invalid id, a missing scope.
    assert (
        client.put("/fhir/Questionnaire/c", json={**base, "id": "d"}, headers=admin).status_code
        == 400
    )
    invalid = {**base, "id": "c", "item": [{"type": "string"}]}
    assert client.put("/fhir/Questionnaire/c", json=invalid, headers=admin).status_code == 422
    assert (
        client.put(
            "/fhir/Questionnaire/c", json={"resourceType": "Patient", "id": "c"}, headers=admin
        ).status_code
        == 400
    )
    assert (
        client.put(
            "/fhir/Questionnaire/bad id!", json={**base, "id": "bad id!"}, headers=admin
        ).status_code
        == 400
    )
    reader = {**auth_for("system/Questionnaire.rs"), **JSON_HEADERS}
    assert (
        client.put("/fhir/Questionnaire/c", json={**base, "id": "c"}, headers=reader).status_code
        == 403
    )
    assert client.delete("/fhir/Questionnaire/a", headers=reader).status_code == 403
    assert client.delete("/fhir/Questionnaire/a", headers=admin).status_code == 204
    assert client.get("/fhir/Questionnaire/a", headers=admin).status_code == 404
    assert client.delete("/fhir/Questionnaire/a", headers=admin).status_code == 204
