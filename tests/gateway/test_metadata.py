"""The CapabilityStatement tells the truth, and openapi/openapi.json matches the app."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from gateway.auth import TokenService
from gateway.fhir.metadata import fhir_marks
from gateway.openapi import render_openapi
from tests.gateway.conftest import SECRET

Headers = dict[str, str]
OPENAPI = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"


def test_capability_statement_is_valid_and_open(client: TestClient) -> None:
    reply = client.get("/fhir/metadata")
    assert reply.status_code == 200
    statement = reply.json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"


def test_capability_statement_matches_the_registered_routes(
    client: TestClient, headers: Headers
) -> None:
    statement = client.get("/fhir/metadata").json()
    claimed = (
        {(r["type"], i["code"]) for r in statement["rest"][0]["resource"] for i in r["interaction"]}
        | {
            (r["type"], "$" + o["name"])
            for r in statement["rest"][0]["resource"]
            for o in r.get("operation", [])
        }
        | {("system", "$" + o["name"]) for o in statement["rest"][0].get("operation", [])}
    )
    app = client.app
    registered = {
        (m["type"], m["name"] if m["kind"] == "interaction" else "$" + m["name"])
        for m in fhir_marks(app)  # type: ignore[arg-type]
    }
    assert claimed == registered
    assert claimed == {
        ("Patient", "read"),
        ("Patient", "vread"),
        ("Patient", "history-instance"),
        ("Patient", "history-type"),
        ("Patient", "search-type"),
        ("Patient", "$match"),
        ("Patient", "$everything"),
        ("Patient", "$export"),
        ("Patient", "$merge"),
        ("Patient", "$unmerge"),
        ("OperationDefinition", "read"),
        ("system", "$export"),
        ("Encounter", "read"),
        ("Encounter", "search-type"),
        ("Subscription", "create"),
        ("Subscription", "read"),
        ("Subscription", "search-type"),
        ("Subscription", "update"),
        ("Subscription", "delete"),
        ("Subscription", "$status"),
        ("Subscription", "$events"),
        ("Questionnaire", "$populate"),
        ("QuestionnaireResponse", "create"),
        ("QuestionnaireResponse", "read"),
        ("QuestionnaireResponse", "search-type"),
        ("Questionnaire", "update"),
        ("Questionnaire", "read"),
        ("Questionnaire", "delete"),
        ("Questionnaire", "search-type"),
        ("QuestionnaireResponse", "$extract"),
        ("Basic", "read"),
        ("Basic", "search-type"),
    }
    (subscription,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription"]
    assert subscription["supportedProfile"] == [
        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"
    ]
    assert statement["instantiates"] == [
        "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/"
        "backport-subscription-server-r4",
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data",
    ]
    # Every /fhir route except metadata is marked, so nothing escapes the statement; the
    # Bulk Data status and file URLs are the async pattern's, handed out by $export.
    paths = app.openapi()["paths"]  # type: ignore[attr-defined]
    unmarked = [
        (path, method)
        for path, item in paths.items()
        for method, operation in item.items()
        if path.startswith("/fhir/")
        and path != "/fhir/metadata"
        and not path.startswith("/fhir/bulk-export/")
        and "x-fhir" not in operation
    ]
    assert unmarked == []
    # Every claimed search parameter is accepted under strict handling.
    token = TokenService(SECRET).issue(
        "reader",
        [
            "system/Patient.rs",
            "system/Encounter.rs",
            "system/QuestionnaireResponse.rs",
            "system/Questionnaire.rs",
            "system/Basic.rs",
        ],
    )
    strict = {"Authorization": f"Bearer {token}", "Prefer": "handling=strict"}
    samples = {
        "date": "ge2020",
        "token": "4155550101",
        "string": "x",
        "reference": "x",
        "uri": "https://x.example/Questionnaire/x",
    }
    checked: set[tuple[str, str]] = set()
    for resource in statement["rest"][0]["resource"]:
        if resource["type"] == "Subscription":
            continue  # a consumer's own: tests/gateway/test_subscriptions.py searches them
        for param in resource.get("searchParam", []):
            value = "male" if param["name"] == "gender" else samples[param["type"]]
            reply = client.get(
                f"/fhir/{resource['type']}", params={param["name"]: value}, headers=strict
            )
            assert reply.status_code == 200, (resource["type"], param["name"], reply.text)
            # And so is every modifier its documentation names.
            _, _, named = param["documentation"].partition("Modifiers: ")
            for modifier in filter(None, named.split(", ")):
                key = param["name"] + modifier
                modified = {":missing": "true", ":of-type": "urn:x|MR|1"}.get(modifier, value)
                reply = client.get(
                    f"/fhir/{resource['type']}", params={key: modified}, headers=strict
                )
                assert reply.status_code == 200, (resource["type"], key, reply.text)
                checked.add((resource["type"], key))
    assert {
        ("Patient", "email:missing"),
        ("Encounter", "status:not"),
        ("Patient", "identifier:of-type"),
        ("Patient", "telecom:missing"),
        ("Encounter", "identifier:not"),
    } <= checked


def test_committed_openapi_matches_the_app() -> None:
    committed = OPENAPI.read_text(encoding="utf-8")
    assert committed == render_openapi(), (
        "openapi/openapi.json is stale: run `askonce openapi --out openapi/openapi.json`"
    )
    assert "/fhir/Patient/{golden_id}" in json.loads(committed)["paths"]


def test_a_post_operation_asked_with_get_is_a_405_not_a_read(
    client: TestClient, headers: Headers
) -> None:
    """``GET /fhir/Patient/$match`` names the method the operation takes; before, it was
    read as a Patient with the id ``$match`` and answered 404 "not a valid FHIR id"."""
    for path in (
        "/fhir/Patient/$match",
        "/fhir/Patient/$merge",
        "/fhir/Questionnaire/$populate",
        "/fhir/QuestionnaireResponse/$extract",
    ):
        reply = client.get(path, headers=headers)
        assert reply.status_code == 405, path
        assert reply.headers["allow"] == "POST"
        issue = reply.json()["issue"][0]
        assert issue["code"] == "not-supported" and path in issue["diagnostics"]
    unknown = client.get("/fhir/Patient/$nosuch", headers=headers)
    assert unknown.status_code == 404
    assert "no operation $nosuch" in unknown.json()["issue"][0]["diagnostics"]
    # A GET operation is still itself (the kick-off answers, not the refusal).
    assert client.get("/fhir/Patient/$export", headers=headers).status_code != 405
    assert client.post("/fhir/Patient/$match", headers=headers, json={}).status_code != 405
