"""SDC ``Questionnaire/$populate``: an intake form pre-filled from the golden record."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.questionnaireresponse import QuestionnaireResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from askonce.demo import DEMO_DATA, INTAKE_QUESTIONNAIRE, POPULATE_BODY
from gateway.operations.fhirpath import MAX_EXPRESSION_STEPS, MAX_STEPS
from gateway.operations.populate import (
    FHIR_QUERY,
    INITIAL_EXPRESSION,
    ITEM_POPULATION_CONTEXT,
    LAUNCH_CONTEXT,
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_QUERIES,
    VARIABLE,
    answer_value,
    parse_populate_request,
)
from gateway.outcomes import OutcomeError
from store.golden import GoldenPatientRepository
from store.models import Audit
from tests.gateway.conftest import patient_resource

Headers = dict[str, str]
URL = "/fhir/Questionnaire/$populate"
FORM_URL = "https://clinic.example/Questionnaire/intake"
GENDER = "http://hl7.org/fhir/administrative-gender"
PATIENT_CONTEXT = {
    "url": LAUNCH_CONTEXT,
    "extension": [
        {
            "url": "name",
            "valueCoding": {
                "system": "http://hl7.org/fhir/uv/sdc/CodeSystem/launchContext",
                "code": "patient",
            },
        },
        {"url": "type", "valueCode": "Patient"},
    ],
}


def fhirpath(expression: str, name: str | None = None) -> dict[str, Any]:
    value = {"language": "text/fhirpath", "expression": expression}
    return {**value, "name": name} if name else value


def initial(expression: str) -> list[dict[str, Any]]:
    return [{"url": INITIAL_EXPRESSION, "valueExpression": fhirpath(expression)}]


def question(
    link_id: str, kind: str, expression: str | None = None, **fields: Any
) -> dict[str, Any]:
    item: dict[str, Any] = {"linkId": link_id, "text": link_id.replace("-", " "), "type": kind}
    if expression is not None:
        item["extension"] = initial(expression)
    return {**item, **fields}


def intake_form(*items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "url": FORM_URL,
        "version": "3",
        "status": "active",
        "subjectType": ["Patient"],
        "extension": [PATIENT_CONTEXT],
        "item": list(items),
        **fields,
    }


def parameters(
    questionnaire: dict[str, Any], subject: str | None, *extra: dict[str, Any]
) -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "questionnaire", "resource": questionnaire}]
    if subject is not None:
        params.append({"name": "subject", "valueReference": {"reference": subject}})
    return {"resourceType": "Parameters", "parameter": [*params, *extra]}


def by_name(named: dict[str, Any], subject: str = "Patient/x") -> dict[str, Any]:
    """``$populate`` input naming its form (``canonical``, ``questionnaireRef``…)."""
    return {
        "resourceType": "Parameters",
        "parameter": [named, {"name": "subject", "valueReference": {"reference": subject}}],
    }


def nested(depth: int) -> dict[str, Any]:
    """A group ``depth`` levels deep."""
    item: dict[str, Any] = {"linkId": "leaf", "type": "string"}
    for level in range(depth - 1):
        item = {"linkId": f"g{level}", "type": "group", "item": [item]}
    return item


def post(client: TestClient, headers: Headers, body: Any) -> Any:
    return client.post(URL, json=body, headers={**headers, "Content-Type": "application/fhir+json"})


def populated(
    client: TestClient, headers: Headers, body: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The QuestionnaireResponse and the issues, checked with fhir.resources."""
    answer = post(client, headers, body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    out = answer.json()
    Parameters.model_validate(out)
    by_name = {p["name"]: p["resource"] for p in out["parameter"]}
    assert set(by_name) <= {"response", "issues"}
    response = by_name["response"]
    QuestionnaireResponse.model_validate(response)
    issues = by_name.get("issues", {"issue": []})
    if "issues" in by_name:
        OperationOutcome.model_validate(issues)
    return response, issues["issue"]


def answers(response: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """linkId -> answers, for every item at any depth (under items and under answers)."""
    found: dict[str, list[dict[str, Any]]] = {}

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            found.setdefault(item["linkId"], []).extend(
                {k: v for k, v in a.items() if k != "item"} for a in item.get("answer", [])
            )
            walk(item.get("item", []))
            for answer in item.get("answer", []):
                walk(answer.get("item", []))

    walk(response.get("item", []))
    return found


@pytest.fixture
def person(add_patient: Callable[..., str]) -> str:
    resource = patient_resource(
        family="Oyelaran",
        given="Adaeze",
        birth_date="1987-06-21",
        gender="female",
        mrn="MRN-7781",
        phone="+1 415 555 0147",
        email="adaeze@example.org",
        postal="94110",
    )
    resource["name"][0]["given"].append("Ngozi")
    return add_patient(resource)


def test_an_intake_form_is_filled_from_the_golden_record(
    client: TestClient, headers: Headers, person: str
) -> None:
    form = intake_form(
        {"linkId": "intro", "type": "display", "text": "Please check these details."},
        {
            "linkId": "about",
            "type": "group",
            "text": "About you",
            "item": [
                question("family", "string", "%patient.name.first().family"),
                question("given", "string", "%patient.name.first().given.first()"),
                question("birth-date", "date", "%patient.birthDate"),
                question(
                    "sex",
                    "choice",
                    "%patient.gender",
                    answerOption=[
                        {"valueCoding": {"system": GENDER, "code": "female", "display": "Female"}},
                        {"valueCoding": {"system": GENDER, "code": "male", "display": "Male"}},
                    ],
                ),
                question("active", "boolean", "%patient.active"),
                question("given-count", "integer", "%patient.name.first().given.count()"),
            ],
        },
        {
            "linkId": "contact",
            "type": "group",
            "item": [
                question("phone", "string", "%patient.telecom.where(system = 'phone').value"),
                question("email", "string", "%patient.telecom.where(system = 'email').value"),
                question("fax", "string", "%patient.telecom.where(system = 'fax').value"),
                question(
                    "postal-code",
                    "string",
                    definition="http://hl7.org/fhir/StructureDefinition/Patient#Patient.address.postalCode",
                ),
            ],
        },
        question("reason", "text"),
    )
    response, issues = populated(client, headers, parameters(form, f"Patient/{person}"))
    assert issues == []
    assert response["questionnaire"] == f"{FORM_URL}|3"
    assert response["status"] == "in-progress"
    assert response["subject"] == {"reference": f"Patient/{person}"}
    assert response["authored"]
    found = answers(response)
    assert found["family"] == [{"valueString": "Oyelaran"}]
    assert found["given"] == [{"valueString": "Adaeze"}]
    assert found["birth-date"] == [{"valueDate": "1987-06-21"}]
    assert found["sex"] == [
        {"valueCoding": {"system": GENDER, "code": "female", "display": "Female"}}
    ]
    assert found["active"] == [{"valueBoolean": True}]
    assert found["given-count"] == [{"valueInteger": 2}]
    assert found["phone"] == [{"valueString": "+1 415 555 0147"}]
    assert found["email"] == [{"valueString": "adaeze@example.org"}]
    assert found["postal-code"] == [{"valueString": "94110"}]
    # Every item of the form is in the response, in order, answered or not.
    assert [i["linkId"] for i in response["item"]] == ["intro", "about", "contact", "reason"]
    assert found["fax"] == [] and found["reason"] == [] and found["intro"] == []
    assert response["item"][1]["text"] == "About you"


def test_a_repeating_group_gets_one_repetition_per_value_with_variables_in_scope(
    client: TestClient, headers: Headers, person: str
) -> None:
    telecom_group = {
        "linkId": "telecom",
        "type": "group",
        "repeats": True,
        "extension": [
            {
                "url": ITEM_POPULATION_CONTEXT,
                "valueExpression": fhirpath("%patient.telecom", "contact"),
            }
        ],
        "item": [
            question("system", "string", "%contact.system"),
            question("value", "string", "%contact.value"),
        ],
    }
    name_group = {
        "linkId": "name",
        "type": "group",
        "extension": [{"url": VARIABLE, "valueExpression": fhirpath("%official.given", "givens")}],
        "item": [
            question("family", "string", "%official.family"),
            question("first", "string", "%givens.first()"),
            question("middle", "string", "%givens.skip(1).first()"),
        ],
    }
    form = intake_form(
        telecom_group,
        name_group,
        extension=[
            PATIENT_CONTEXT,
            {"url": VARIABLE, "valueExpression": fhirpath("%patient.name.first()", "official")},
        ],
    )
    response, issues = populated(client, headers, parameters(form, f"Patient/{person}"))
    assert issues == []
    groups = [i for i in response["item"] if i["linkId"] == "telecom"]
    assert [[a["answer"][0]["valueString"] for a in g["item"]] for g in groups] == [
        ["phone", "+1 415 555 0147"],
        ["email", "adaeze@example.org"],
    ]
    found = answers(response)
    assert found["family"] == [{"valueString": "Oyelaran"}]
    assert found["first"] == [{"valueString": "Adaeze"}]
    assert found["middle"] == [{"valueString": "Ngozi"}]


def test_defaults_nested_questions_and_what_cannot_be_used(
    client: TestClient, headers: Headers, person: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    form = intake_form(
        question("language", "string", initial=[{"valueString": "English"}]),
        question(
            "contact-method",
            "choice",
            answerOption=[
                {"valueString": "phone", "initialSelected": True},
                {"valueString": "post"},
            ],
        ),
        question(
            "has-phone",
            "boolean",
            "%patient.telecom.where(system = 'phone').exists()",
            item=[question("number", "string", "%patient.telecom.where(system = 'phone').value")],
        ),
        question("all-givens", "string", "%patient.name.given"),
        question("whole-name", "string", "%patient.name.first()"),
        question(
            "query",
            "string",
            extension=[
                {
                    "url": INITIAL_EXPRESSION,
                    "valueExpression": {
                        "language": "application/x-fhir-query",
                        "expression": "Observation?subject={{%patient.id}}",
                    },
                }
            ],
        ),
        question("broken", "string", "%patient.name.where(("),
        question("undefined", "string", "%nobody.name"),
        question(
            "sex",
            "choice",
            "%patient.gender",
            answerOption=[{"valueCoding": {"system": GENDER, "code": "male"}}],
        ),
        question(
            "sex-other",
            "open-choice",
            "%patient.gender",
            answerOption=[{"valueCoding": {"system": GENDER, "code": "male"}}],
        ),
    )
    response, issues = populated(client, headers, parameters(form, f"Patient/{person}"))
    found = answers(response)
    assert found["language"] == [{"valueString": "English"}]
    assert found["contact-method"] == [{"valueString": "phone"}]
    # A nested question sits under its parent's answer (qrs-1).
    (has_phone,) = [i for i in response["item"] if i["linkId"] == "has-phone"]
    assert has_phone["answer"][0]["valueBoolean"] is True
    assert has_phone["answer"][0]["item"][0]["answer"] == [{"valueString": "+1 415 555 0147"}]
    assert "item" not in has_phone
    # Several values for a non-repeating item: the first one, and a warning.
    assert found["all-givens"] == [{"valueString": "Adaeze"}]
    assert found["whole-name"] == found["query"] == found["broken"] == found["undefined"] == []
    assert found["sex"] == [] and found["sex-other"] == [{"valueString": "female"}]
    by_item = {i["expression"][0].split("'")[1]: i for i in issues}
    assert set(by_item) == {"all-givens", "whole-name", "query", "broken", "undefined", "sex"}
    assert by_item["query"]["code"] == "not-supported"
    assert by_item["broken"]["code"] == "invalid"
    assert all(i["severity"] == "warning" for i in issues)
    # Warnings name items, never values; nothing of the patient reaches the logs.
    text = json.dumps(issues) + " ".join(
        r.getMessage() + repr(r.__dict__) for r in caplog.records if not r.name.startswith("httpx")
    )
    for secret in ("Oyelaran", "Adaeze", "Ngozi", "0147", "adaeze@", "1987", "MRN-7781"):
        assert secret not in text


def test_a_merged_subject_is_answered_from_its_survivor(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    session_factory: sessionmaker[Session],
) -> None:
    survivor = add_patient(family="Survivor")
    loser = add_patient(family="Loser")
    with session_factory() as session:
        repo = GoldenPatientRepository(session)
        golden = repo.read(loser)
        repo.save(golden, golden.resource, [], status="merged", merged_into=survivor)
        session.commit()
    form = intake_form(question("family", "string", "%patient.name.family"))
    response, issues = populated(
        client, headers, parameters(form, f"http://testserver/fhir/Patient/{loser}")
    )
    assert response["subject"] == {"reference": f"Patient/{survivor}"}
    assert answers(response)["family"] == [{"valueString": "Survivor"}]
    assert [i["severity"] for i in issues] == ["information"]
    assert survivor in issues[0]["diagnostics"]


def test_local_false_and_context_resources(
    client: TestClient, headers: Headers, person: str, add_patient: Callable[..., str]
) -> None:
    guardian = add_patient(family="Guardian")
    practitioner = {"resourceType": "Practitioner", "name": [{"family": "Okafor"}]}
    form = intake_form(
        question("family", "string", "%patient.name.family"),
        question("clinician", "string", "%user.name.family"),
        question("guardian", "string", "%guardian.name.family"),
        question("encounter", "string", "%encounter.id"),
        extension=[
            PATIENT_CONTEXT,
            *(
                {
                    "url": LAUNCH_CONTEXT,
                    "extension": [
                        {"url": "name", "valueId": name},
                        {"url": "type", "valueCode": kind},
                    ],
                }
                for name, kind in (
                    ("user", "Practitioner"),
                    ("guardian", "Patient"),
                    ("encounter", "Encounter"),
                )
            ),
        ],
    )
    body = parameters(
        form,
        f"Patient/{person}",
        {"name": "local", "valueBoolean": False},
        {
            "name": "context",
            "part": [
                {"name": "name", "valueString": "user"},
                {"name": "content", "resource": practitioner},
            ],
        },
        {
            "name": "context",
            "part": [
                {"name": "name", "valueString": "guardian"},
                {"name": "content", "valueReference": {"reference": f"Patient/{guardian}"}},
            ],
        },
        {
            "name": "context",
            "part": [
                {"name": "name", "valueString": "extra"},
                {"name": "content", "resource": practitioner},
            ],
        },
    )
    response, issues = populated(client, headers, body)
    found = answers(response)
    # local=false: the subject's golden record is not read.
    assert found["family"] == [] and response["subject"] == {"reference": f"Patient/{person}"}
    assert found["clinician"] == [{"valueString": "Okafor"}]
    assert found["guardian"] == [{"valueString": "Guardian"}]
    diagnostics = sorted(i["diagnostics"] for i in issues)
    assert diagnostics == [
        "context extra is not a launchContext the Questionnaire declares.",
        "launchContext encounter was not given.",
        "launchContext patient was not given.",
    ]


def test_populate_is_audited_with_the_records_it_disclosed(
    client: TestClient, headers: Headers, person: str, session_factory: sessionmaker[Session]
) -> None:
    form = intake_form(question("family", "string", "%patient.name.family"))
    populated(client, headers, parameters(form, f"Patient/{person}"))
    post(client, headers, parameters(form, "Patient/no-such-person"))
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        rows = session.scalars(
            select(Audit).where(Audit.action == "populate").order_by(Audit.id)
        ).all()
    assert [(r.resource_type, r.outcome) for r in rows] == [("Patient", 200), ("Patient", 404)]
    assert rows[0].detail["ids"] == [person]


@pytest.mark.parametrize(
    ("body", "status", "expression"),
    [
        ({"resourceType": "Patient"}, 400, "Parameters"),
        (parameters(intake_form(), None), 400, "subject"),
        (
            {
                "resourceType": "Parameters",
                "parameter": [{"name": "subject", "valueReference": {"reference": "Patient/x"}}],
            },
            400,
            "questionnaire",
        ),
        (parameters(intake_form(), "Encounter/123"), 422, "subject"),
        (parameters(intake_form(), "https://elsewhere.example/fhir/Patient/1"), 422, "subject"),
        (
            parameters(intake_form(), "Patient/x", {"name": "local", "valueString": "yes"}),
            400,
            "local",
        ),
        # A form named but not stored here (a URL is never fetched).
        (by_name({"name": "canonical", "valueUri": FORM_URL}), 422, "canonical"),
        (
            by_name(
                {"name": "questionnaireRef", "valueReference": {"reference": "Questionnaire/1"}}
            ),
            422,
            "questionnaireRef",
        ),
        (by_name({"name": "identifier", "valueIdentifier": {"value": "x"}}), 422, "identifier"),
        # Both an inline form and a name: which one?
        (
            parameters(intake_form(), "Patient/x", {"name": "canonical", "valueUri": FORM_URL}),
            400,
            "canonical",
        ),
        (parameters({"resourceType": "Patient"}, "Patient/x"), 422, "questionnaire"),
        (
            parameters(intake_form({"type": "string"}), "Patient/x"),
            422,
            "Questionnaire.item.0.linkId",
        ),
        (parameters(intake_form(subjectType=["Encounter"]), "Patient/x"), 422, "subjectType"),
        (parameters(intake_form(nested(MAX_DEPTH + 1)), "Patient/x"), 422, "item"),
        (
            parameters(
                intake_form(),
                "Patient/x",
                {"name": "context", "part": [{"name": "name", "valueString": "user"}]},
            ),
            400,
            "context",
        ),
        (
            parameters(
                intake_form(),
                "Patient/x",
                {
                    "name": "context",
                    "part": [
                        {"name": "name", "valueString": "encounter"},
                        {"name": "content", "valueReference": {"reference": "Encounter/1"}},
                    ],
                },
            ),
            422,
            "context",
        ),
    ],
)
def test_bad_requests_get_an_operation_outcome(
    client: TestClient, headers: Headers, body: dict[str, Any], status: int, expression: str
) -> None:
    answer = post(client, headers, body)
    assert answer.status_code == status, answer.text
    outcome = answer.json()
    OperationOutcome.model_validate(outcome)
    assert outcome["issue"][0]["severity"] == "error"
    assert any(expression in e for e in outcome["issue"][0]["expression"])


def test_unknown_subject_scope_and_media_type(
    client: TestClient, headers: Headers, auth_for: Callable[..., Headers], person: str
) -> None:
    form = intake_form(question("family", "string", "%patient.name.family"))
    assert post(client, headers, parameters(form, "Patient/no-such-person")).status_code == 404
    assert post(client, {}, parameters(form, f"Patient/{person}")).status_code == 401
    encounters_only = auth_for("system/Encounter.rs")
    assert post(client, encounters_only, parameters(form, f"Patient/{person}")).status_code == 403
    as_text = client.post(URL, content=b"x", headers={**headers, "Content-Type": "text/plain"})
    assert as_text.status_code == 415


def test_the_capability_statement_declares_populate(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    (questionnaire,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Questionnaire"]
    assert questionnaire["operation"] == [
        {
            "name": "populate",
            "definition": "http://hl7.org/fhir/uv/sdc/OperationDefinition/Questionnaire-populate",
        }
    ]
    # The stored forms that canonical and questionnaireRef name (tests/gateway/test_forms.py).
    assert {i["code"] for i in questionnaire["interaction"]} == {
        "update",
        "read",
        "delete",
        "search-type",
    }


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("boolean", False, {"valueBoolean": False}),
        ("boolean", "false", None),
        ("decimal", 1.5, {"valueDecimal": 1.5}),
        ("integer", 3, {"valueInteger": 3}),
        ("integer", 2.5, None),
        ("integer", True, None),
        ("date", "2024-05-01T09:00:00Z", {"valueDate": "2024-05-01"}),
        ("date", "May 1st", None),
        ("dateTime", "2024-05", {"valueDateTime": "2024-05"}),
        ("time", "09:30:00", {"valueTime": "09:30:00"}),
        ("string", 42, {"valueString": "42"}),
        ("string", {"family": "x"}, None),
        ("url", "https://a.example", {"valueUri": "https://a.example"}),
        (
            "reference",
            {"resourceType": "Patient", "id": "p1"},
            {"valueReference": {"reference": "Patient/p1"}},
        ),
        ("quantity", 70, {"valueQuantity": {"value": 70}}),
        (
            "attachment",
            {"contentType": "image/png", "url": "https://a.example/x.png"},
            {"valueAttachment": {"contentType": "image/png", "url": "https://a.example/x.png"}},
        ),
        (
            "choice",
            {"coding": [{"system": GENDER, "code": "female"}]},
            {"valueCoding": {"system": GENDER, "code": "female"}},
        ),
        ("choice", "female", {"valueCoding": {"code": "female"}}),
        ("open-choice", "female", {"valueString": "female"}),
        ("group", "x", None),
    ],
)
def test_answer_values_follow_the_item_type(
    kind: str, value: Any, expected: dict[str, Any] | None
) -> None:
    assert answer_value(kind, value) == expected


def test_a_questionnaire_has_at_most_max_items() -> None:
    items = [{"linkId": str(i), "type": "string"} for i in range(MAX_ITEMS)]
    parse_populate_request(parameters(intake_form(*items), "Patient/x"), "http://testserver")
    items.append({"linkId": "one-more", "type": "string"})
    with pytest.raises(OutcomeError) as raised:
        parse_populate_request(parameters(intake_form(*items), "Patient/x"), "http://testserver")
    assert raised.value.status == 422


def test_the_bundled_intake_form_is_filled_from_a_demo_patient(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    questionnaire = json.loads(INTAKE_QUESTIONNAIRE.read_text(encoding="utf-8"))
    with (DEMO_DATA / "ehr-a" / "Patient.ndjson").open(encoding="utf-8") as lines:
        patient = json.loads(lines.readline())
    golden_id = add_patient(patient)
    add_encounter(golden_id, start="2025-11-03T10:15:00+00:00")
    response, issues = populated(client, headers, parameters(questionnaire, f"Patient/{golden_id}"))
    assert issues == []
    found = answers(response)
    home = patient["address"][0]
    assert found["visit.last-seen"] == [{"valueDateTime": "2025-11-03T10:15:00+00:00"}]
    assert found["about.family"] == [{"valueString": patient["name"][0]["family"]}]
    assert found["about.given"] == [{"valueString": patient["name"][0]["given"][0]}]
    assert found["about.birth-date"] == [{"valueDate": patient["birthDate"]}]
    assert found["about.sex"][0]["valueCoding"]["code"] == patient["gender"]
    assert found["contact.email"] == [
        {"valueString": next(t["value"] for t in patient["telecom"] if t["system"] == "email")}
    ]
    assert found["address.line"] == [{"valueString": line} for line in home["line"]]
    assert found["address.city"] == [{"valueString": home["city"]}]
    assert found["visit.contact-preference"] == [{"valueString": "Email"}]
    assert found["visit.reason"] == found["visit.consent"] == []


def test_the_demo_prints_a_populate_body_that_the_operation_reads() -> None:
    printed = subprocess.run(
        [sys.executable, "-c", POPULATE_BODY, str(INTAKE_QUESTIONNAIRE), "some-golden-id"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    request = parse_populate_request(json.loads(printed), "http://127.0.0.1:8000")
    assert request.subject == "some-golden-id" and request.local
    assert request.questionnaire["url"] == "https://askonce.dev/fhir/Questionnaire/intake"


def test_a_form_found_valid_is_remembered_by_its_content() -> None:
    form = intake_form(question("family", "string", "%patient.name.family"))
    body = parameters(form, "Patient/x")
    assert parse_populate_request(body, "http://testserver").questionnaire == form
    assert parse_populate_request(body, "http://testserver").questionnaire == form
    # The same form changed into an invalid one is a new digest: validated, and refused.
    form["item"][0].pop("linkId")
    with pytest.raises(OutcomeError) as raised:
        parse_populate_request(body, "http://testserver")
    assert raised.value.status == 422


def test_a_patient_without_an_address_leaves_its_group_unanswered_without_warnings(
    client: TestClient, headers: Headers, add_patient: Callable[..., str]
) -> None:
    questionnaire = json.loads(INTAKE_QUESTIONNAIRE.read_text(encoding="utf-8"))
    golden_id = add_patient(postal=None, phone=None)
    response, issues = populated(client, headers, parameters(questionnaire, f"Patient/{golden_id}"))
    assert issues == []
    (address,) = [i for i in response["item"] if i["linkId"] == "address"]
    assert [i["linkId"] for i in address["item"]] == [
        "address.line",
        "address.city",
        "address.state",
        "address.postal-code",
        "address.country",
    ]
    assert all("answer" not in i for i in address["item"])
    assert answers(response)["contact.home-phone"] == []


def query_variable(name: str, query: str) -> dict[str, Any]:
    return {
        "url": VARIABLE,
        "valueExpression": {"name": name, "language": FHIR_QUERY, "expression": query},
    }


def visits_form() -> dict[str, Any]:
    """A form that asks for the last visit and the number of visits (x-fhir-query)."""
    return intake_form(
        question("last-visit", "dateTime", "%last.entry.resource.period.start"),
        question("visit-count", "integer", "%visits.entry.count()"),
        question("same-birth-date", "integer", "%twins.entry.count()"),
        extension=[
            PATIENT_CONTEXT,
            query_variable("last", "Encounter?patient={{%patient.id}}&_sort=-date&_count=1"),
            query_variable("visits", "Encounter?patient=Patient/{{%patient.id}}&_count=50"),
            query_variable("twins", "Patient?birthdate={{%patient.birthDate}}"),
        ],
    )


def test_x_fhir_query_variables_read_this_servers_encounters_and_patients(
    client: TestClient,
    headers: Headers,
    person: str,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
    session_factory: sessionmaker[Session],
) -> None:
    other = add_patient(family="Other", birth_date="1987-06-21")
    add_encounter(person, start="2024-01-10T09:00:00+00:00", end=None)
    add_encounter(person, start="2025-03-02T14:30:00+00:00", end=None)
    add_encounter(other, start="2026-01-01T08:00:00+00:00", end=None)
    response, issues = populated(client, headers, parameters(visits_form(), f"Patient/{person}"))
    assert issues == []
    found = answers(response)
    assert found["last-visit"] == [{"valueDateTime": "2025-03-02T14:30:00+00:00"}]
    assert found["visit-count"] == [{"valueInteger": 2}]
    assert found["same-birth-date"] == [{"valueInteger": 2}]
    # The audit names whose data the answers hold: the subject and the other patient found.
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        (row,) = session.scalars(select(Audit).where(Audit.action == "populate")).all()
    assert set(row.detail["ids"]) == {person, other}


def test_x_fhir_query_never_widens_and_needs_the_search_scope(
    client: TestClient,
    headers: Headers,
    auth_for: Callable[..., Headers],
    person: str,
    add_encounter: Callable[..., int],
) -> None:
    add_encounter(person)
    # No patient in context: the query is not run (Encounter?patient= would be everyone's).
    body = parameters(visits_form(), f"Patient/{person}", {"name": "local", "valueBoolean": False})
    response, issues = populated(client, headers, body)
    assert answers(response)["visit-count"] == [{"valueInteger": 0}]
    assert answers(response)["last-visit"] == []
    assert [i["diagnostics"] for i in issues] == ["launchContext patient was not given."]
    # A token that may read patients but not search encounters: a warning, no answer.
    patients_only = auth_for("system/Patient.rs")
    response, issues = populated(
        client, patients_only, parameters(visits_form(), f"Patient/{person}")
    )
    assert answers(response)["last-visit"] == []
    assert answers(response)["same-birth-date"] == [{"valueInteger": 1}]
    assert sorted(i["code"] for i in issues) == ["forbidden", "forbidden"]
    assert "system/Encounter.s" in issues[0]["diagnostics"]
    # Nor through a Patient search that brings the encounters in with _revinclude.
    revincluded = intake_form(
        question("visit-count", "integer", "%me.entry.where(search.mode = 'include').count()"),
        extension=[
            PATIENT_CONTEXT,
            query_variable("me", "Patient?_id={{%patient.id}}&_revinclude=Encounter:subject"),
        ],
    )
    response, issues = populated(
        client, patients_only, parameters(revincluded, f"Patient/{person}")
    )
    assert answers(response)["visit-count"] == [{"valueInteger": 0}]
    assert [i["code"] for i in issues] == ["forbidden"]
    assert "searching Encounter needs the scope system/Encounter.s" in issues[0]["diagnostics"]
    response, issues = populated(client, headers, parameters(revincluded, f"Patient/{person}"))
    assert (answers(response)["visit-count"], issues) == ([{"valueInteger": 1}], [])


def test_x_fhir_query_with_a_bad_parameter_is_a_warning(
    client: TestClient, headers: Headers, person: str
) -> None:
    form = intake_form(
        question("x", "integer", "%bad.entry.count()"),
        extension=[PATIENT_CONTEXT, query_variable("bad", "Encounter?colour=blue")],
    )
    response, issues = populated(client, headers, parameters(form, f"Patient/{person}"))
    assert answers(response)["x"] == [{"valueInteger": 0}]
    assert [i["code"] for i in issues] == ["invalid"]
    assert "colour" in issues[0]["diagnostics"]


def test_a_request_runs_at_most_max_queries_searches(
    client: TestClient, headers: Headers, person: str
) -> None:
    group = {
        "linkId": "each",
        "type": "group",
        "repeats": True,
        "extension": [
            {
                "url": ITEM_POPULATION_CONTEXT,
                "valueExpression": fhirpath("(1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10)", "n"),
            }
        ],
        "item": [
            {
                **question("count", "integer", "%found.entry.count()"),
                "extension": [
                    query_variable("found", "Patient?_id={{%patient.id}}"),
                    *initial("%found.entry.count()"),
                ],
            },
            {
                **question("again", "integer", "%again.entry.count()"),
                "extension": [
                    query_variable("again", "Patient?_id={{%patient.id}}"),
                    *initial("%again.entry.count()"),
                ],
            },
            {
                **question("more", "integer", "%more.entry.count()"),
                "extension": [
                    query_variable("more", "Patient?_id={{%patient.id}}"),
                    *initial("%more.entry.count()"),
                ],
            },
        ],
    }
    response, issues = populated(
        client, headers, parameters(intake_form(group), f"Patient/{person}")
    )
    counts = [a for item in answers(response).values() for a in item]
    assert counts.count({"valueInteger": 1}) == MAX_QUERIES
    assert [i["code"] for i in issues] == ["too-costly"] * (30 - MAX_QUERIES)


def test_expressions_that_never_end_are_stopped(
    client: TestClient, headers: Headers, person: str
) -> None:
    endless = [
        question(f"endless-{n}", "integer", f"{n}.repeat($this + 1).count()") for n in range(6)
    ]
    form = intake_form(*endless, question("family", "string", "%patient.name.family"))
    response, issues = populated(client, headers, parameters(form, f"Patient/{person}"))
    found = answers(response)
    assert all(found[f"endless-{n}"] == [] for n in range(6))
    # Each runaway expression stops at its own limit (20,000 steps), until the request's
    # (100,000) is spent, during the fifth: then it, and every later expression (the
    # family name here), stop at once.
    per_expression = f"more than {MAX_EXPRESSION_STEPS} evaluation steps in one expression"
    per_request = f"more than {MAX_STEPS} evaluation steps in this request"
    assert MAX_STEPS == 5 * MAX_EXPRESSION_STEPS
    assert [i["code"] for i in issues] == ["too-costly"] * 7
    assert [per_expression in i["diagnostics"] for i in issues] == [True] * 4 + [False] * 3
    assert all(per_request in i["diagnostics"] for i in issues[4:])
    assert issues[6]["expression"] == ["Questionnaire.item.where(linkId = 'family')"]
    assert found["family"] == []


def test_a_collection_over_the_limit_is_stopped(
    client: TestClient, headers: Headers, person: str
) -> None:
    numbers = "(" + " | ".join(str(n) for n in range(1, 41)) + ")"
    form = intake_form(
        question("squared", "integer", "%n.select(%n).count()"),
        question("family", "string", "%patient.name.family"),
        extension=[PATIENT_CONTEXT, {"url": VARIABLE, "valueExpression": fhirpath(numbers, "n")}],
    )
    response, issues = populated(client, headers, parameters(form, f"Patient/{person}"))
    assert answers(response)["squared"] == []
    assert [i["code"] for i in issues] == ["too-costly"]
    assert "more than 1000 values" in issues[0]["diagnostics"]
    assert answers(response)["family"] == [{"valueString": "Oyelaran"}]


def test_regular_expressions_and_growing_strings_are_refused(
    client: TestClient, headers: Headers, person: str
) -> None:
    grow = "'aaaaaaaaaa'" + ".replace('a', 'aaaaaaaaaa')" * 12
    form = intake_form(
        question(
            "backtracking", "boolean", "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!'.matches('(a+)+$')"
        ),
        question("quoted", "string", "%patient.name.family.`replaceMatches`('(a+)+$', 'b')"),
        question("grown", "integer", f"{grow}.length()"),
        question("family", "string", "%patient.name.family"),
    )
    response, issues = populated(client, headers, parameters(form, f"Patient/{person}"))
    found = answers(response)
    assert found["backtracking"] == found["quoted"] == found["grown"] == []
    assert [i["code"] for i in issues] == ["not-supported", "not-supported", "too-costly"]
    assert "regular expressions" in issues[0]["diagnostics"]
    assert "a string of more than" in issues[2]["diagnostics"]
    assert found["family"] == [{"valueString": "Oyelaran"}]


def test_fhirpath_is_loaded_only_when_a_form_is_populated() -> None:
    # The composition root imports the whole gateway (every CLI command, every worker).
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, askonce.runtime; "
            "print(sorted(m for m in ('fhirpathpy', 'antlr4') if m in sys.modules))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert loaded == "[]"
