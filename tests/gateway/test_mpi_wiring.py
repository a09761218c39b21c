"""``$match`` and steward decisions through the real mpi engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fhir_mapping import parse_patient
from mpi import resolve_patients
from store.models import Link, Source, SourceRecord

Headers = dict[str, str]
SSN = "http://hl7.org/fhir/sid/us-ssn"
FHIR = {"Content-Type": "application/fhir+json"}


def person(rid: str, family: str, given: str, birth: str, ssn: str, phone: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": rid,
        "name": [{"family": family, "given": [given]}],
        "birthDate": birth,
        "gender": "female",
        "identifier": [{"system": SSN, "value": ssn}],
        "telecom": [{"system": "phone", "value": phone}],
        "address": [
            {"line": ["12 Main St"], "city": "Oakland", "postalCode": "94612", "country": "US"}
        ],
    }


def ingest(session: Session, source_name: str, resources: list[dict[str, Any]]) -> list[Any]:
    source = session.scalar(select(Source).where(Source.name == source_name))
    if source is None:
        source = Source(name=source_name, kind="fhir", base_url="http://ehr.invalid")
        session.add(source)
        session.flush()
    items = []
    for resource in resources:
        patient = parse_patient(resource)
        row = SourceRecord(
            source_id=source.id,
            resource_type="Patient",
            resource_id=resource["id"],
            raw=resource,
            normalized=patient.to_dict(),
        )
        session.add(row)
        session.flush()
        items.append((row, patient))
    resolutions = resolve_patients(session, items)
    session.commit()
    return resolutions


ADA = person("a1", "Oyelaran", "Adaeze", "1984-06-02", "512-34-6789", "(415) 867-5309")
MEI = person("m1", "Lindqvist", "Mei", "1991-11-23", "623-45-7890", "(510) 555-0182")


def test_match_uses_the_mpi_engine(
    client: TestClient, headers: Headers, session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        ada, mei = ingest(session, "ehr-a", [ADA, MEI])
    probe = {**ADA, "id": "probe"}
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": probe}]}
    reply = client.post("/fhir/Patient/$match", json=body, headers={**headers, **FHIR})
    assert reply.status_code == 200, reply.text
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(reply.json())  # search.score, the match-grade extension: valid R4
    entries = reply.json()["entry"]
    assert entries[0]["resource"]["id"] == ada.golden_id
    assert entries[0]["search"]["extension"][0]["valueCode"] == "certain"
    assert 0.9 < entries[0]["search"]["score"] <= 1.0
    assert mei.golden_id not in [e["resource"]["id"] for e in entries]
    stranger = person("s1", "Quispe", "Rosa", "1950-01-09", "734-56-8901", "(212) 555-0100")
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": stranger},
            {"name": "onlyCertainMatches", "valueBoolean": True},
        ],
    }
    none = client.post("/fhir/Patient/$match", json=body, headers={**headers, **FHIR}).json()
    assert none.get("entry", []) == [] and none["total"] == 0


def test_steward_pair_decisions(
    client: TestClient,
    auth_for: Callable[..., dict[str, str]],
    session_factory: sessionmaker[Session],
) -> None:
    admin = auth_for("askonce.admin", client_id="steward-1")
    with session_factory() as session:
        ada, mei = ingest(session, "ehr-a", [ADA, MEI])
    decided = client.post(
        "/admin/decisions",
        json={
            "decision": "match",
            "record_a_id": ada.source_record_id,
            "record_b_id": mei.source_record_id,
        },
        headers=admin,
    )
    assert decided.status_code == 200, decided.text
    with session_factory() as session:
        goldens = {
            session.scalar(
                select(Link.golden_id).where(Link.source_record_id == r.source_record_id)
            )
            for r in (ada, mei)
        }
    assert len(goldens) == 1
    missing = client.post(
        "/admin/decisions",
        json={"decision": "no-match", "record_a_id": 99998, "record_b_id": 99999},
        headers=admin,
    )
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    assert (
        client.post(
            "/admin/review/12345/decision", json={"decision": "match"}, headers=admin
        ).status_code
        == 404
    )
    bad = client.post("/admin/review/1/decision", json={"decision": "maybe"}, headers=admin)
    assert bad.status_code == 400


def test_a_merged_golden_id_points_at_its_survivor(
    client: TestClient, headers: Headers, session_factory: sessionmaker[Session]
) -> None:
    from mpi import merge_golden

    with session_factory() as session:
        ada, mei = ingest(session, "ehr-a", [ADA, MEI])
        merge_golden(session, mei.golden_id, ada.golden_id, actor="steward")
        session.commit()
    loser = client.get(f"/fhir/Patient/{mei.golden_id}", headers=headers)
    assert loser.status_code == 200
    body = loser.json()
    assert body["active"] is False
    assert body["link"][0] == {
        "other": {"reference": f"Patient/{ada.golden_id}"},
        "type": "replaced-by",
    }
    assert [link["type"] for link in body["link"]].count("replaced-by") == 1
    found = client.get(f"/fhir/Patient?_id={mei.golden_id},{ada.golden_id}", headers=headers).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [ada.golden_id]
    history = client.get(f"/fhir/Patient/{mei.golden_id}/_history", headers=headers).json()
    assert len(history["entry"]) >= 2
