"""Encounter search, ``$everything`` and ``$match`` as consumers call them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from gateway import GatewayState
from store.golden import GoldenPatientRepository
from store.models import Encounter, FieldProvenance, GoldenPatient, Source, SourceRecord
from tests.gateway.conftest import patient_resource

Headers = dict[str, str]


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def _encounters(client: TestClient, headers: Headers, query: str) -> list[str]:
    """The ids an Encounter search with ``query`` finds (one page), sorted."""
    reply = client.get(f"/fhir/Encounter?{query}", headers=headers)
    assert reply.status_code == 200, reply.text
    return sorted(_ids(reply.json()))


def _follow(client: TestClient, headers: Headers, url: str) -> list[dict[str, Any]]:
    """Every entry of every page, following next links verbatim."""
    entries: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        reply = client.get(next_url, headers=headers)
        assert reply.status_code == 200, reply.text
        bundle = reply.json()
        entries.extend(bundle.get("entry", []))
        next_url = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
    return entries


def test_encounter_search_spans_every_source_of_one_person(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    person, other = add_patient(), add_patient()
    a = add_encounter(
        person,
        source_name="ehr-a",
        start="2024-01-10T08:00:00+00:00",
        end="2024-01-10T09:00:00+00:00",
    )
    b = add_encounter(
        person,
        source_name="ehr-b",
        start="2024-06-02T08:00:00+00:00",
        end=None,
        status="in-progress",
        class_code="IMP",
    )
    add_encounter(other, source_name="ehr-a")

    def search(query: str) -> list[str]:
        return _encounters(client, headers, query)

    assert search(f"patient={person}") == sorted([str(a), str(b)])
    assert search(f"patient=Patient/{person}") == sorted([str(a), str(b)])
    assert search(f"patient={person}&date=2024-01") == [str(a)]
    assert search(f"patient={person}&date=ge2024-03-01") == [str(b)]
    assert search(f"patient={person}&date=lt2024-01-10T08:30:00Z") == [str(a)]
    assert search(f"patient={person}&status=in-progress") == [str(b)]
    assert search(
        f"patient={person}&class=http://terminology.hl7.org/CodeSystem/v3-ActCode|AMB"
    ) == [str(a)]
    assert search(f"patient={person}&_lastUpdated=ge2000") == sorted([str(a), str(b)])
    one = client.get(f"/fhir/Encounter/{a}", headers=headers).json()
    assert one["subject"] == {"reference": f"Patient/{person}"}
    assert one["identifier"][-1]["system"].startswith("urn:askonce:source:")
    assert client.get("/fhir/Encounter/999999", headers=headers).status_code == 404
    assert client.get("/fhir/Encounter?date=2024-99", headers=headers).status_code == 400


def test_encounter_search_modifiers(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    """``status:not``, ``class:not`` and ``date:missing`` on Encounter."""
    person = add_patient()
    done = add_encounter(person, status="finished", class_code="AMB")
    inpatient = add_encounter(person, status="in-progress", class_code="IMP")
    undated = add_encounter(person, start=None, end=None, status="planned", class_code="AMB")

    def search(query: str) -> list[str]:
        return _encounters(client, headers, f"patient={person}&{query}")

    assert search("status:not=finished") == sorted([str(inpatient), str(undated)])
    assert search("status:not=finished,planned") == [str(inpatient)]
    assert search("class:not=AMB") == [str(inpatient)]
    assert search("date:missing=true") == [str(undated)]
    assert search("date:missing=false") == sorted([str(done), str(inpatient)])
    for bad in ("date:missing=yes", "status:missing=true", "date:not=2024", "class:above=A"):
        reply = client.get(f"/fhir/Encounter?{bad}", headers=headers)
        assert reply.status_code == 400, bad


ACT = "http://www.ama-assn.org/go/cpt"
VISIT = "https://ehr-a.example.org/visit-number"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def test_encounter_search_by_identifier_and_type(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    """US Core's ``identifier`` (the source's own, and the source id askonce serves) and
    ``type`` (any coding of any type, ``:not``, ``:missing``)."""
    person, other = add_patient(), add_patient()
    office = add_encounter(
        person,
        identifier=[
            {"system": VISIT, "value": "V-100", "type": {"coding": [{"system": V2, "code": "VN"}]}},
            {"value": "loose-7"},
        ],
        type=[{"coding": [{"system": ACT, "code": "99213", "display": "Office visit"}]}],
    )
    checkup = add_encounter(
        other,
        source_name="ehr-b",
        identifier=[{"system": "https://ehr-b.example.org/visit", "value": "V-100"}],
        type=[
            {"text": "no coding"},
            {"coding": [{"code": "local-1"}, {"system": ACT, "code": "99396"}]},
        ],
    )
    untyped = add_encounter(person)

    def search(query: str) -> list[str]:
        return _encounters(client, headers, query)

    assert search(f"identifier={VISIT}|V-100") == [str(office)]
    assert search("identifier=V-100") == sorted([str(office), str(checkup)])
    assert search(f"identifier={VISIT}|") == [str(office)]
    assert search("identifier=|loose-7") == [str(office)]
    assert search("identifier=|") == [str(office)]  # any identifier without a system
    assert search(f"identifier=|V-100,{VISIT}|nope") == []
    assert search(f"identifier={VISIT}|V-100&patient={other}") == []
    assert search(f"type={ACT}|99213") == [str(office)]
    assert search("type=99396,99213") == sorted([str(office), str(checkup)])
    assert search("type=|local-1") == [str(checkup)]
    assert search(f"type=|99396&identifier={VISIT}|V-100") == []
    assert search(f"patient={person}&type:not={ACT}|99213") == [str(untyped)]
    assert search(f"patient={person}&type:missing=true") == [str(untyped)]
    assert search("type:missing=false") == sorted([str(office), str(checkup)])
    # The identifier askonce serves with the source's own id finds the encounter.
    served = client.get(f"/fhir/Encounter/{checkup}", headers=headers).json()
    own = served["identifier"][-1]
    assert own["system"].startswith("urn:askonce:source:")
    assert search(f"identifier={own['system']}|{own['value']}") == [str(checkup)]
    assert search(f"identifier={own['value']}") == [str(checkup)]
    assert search(f"identifier={own['system']}|") == [str(checkup)]
    assert search(f"identifier={own['system']}|{own['value']}x") == []
    # :not, none of the values (an encounter without any from its source included);
    # :missing, never: each is served with the identifier carrying its source's own id.
    assert search(f"identifier:not={VISIT}|V-100") == sorted([str(checkup), str(untyped)])
    assert search("identifier:not=V-100,|loose-7") == [str(untyped)]
    assert search(f"identifier:not={own['system']}|{own['value']}") == sorted(
        [str(office), str(untyped)]
    )
    assert search("identifier:missing=true") == []
    assert search(f"identifier:of-type={V2}|VN|V-100") == [str(office)]
    assert search(f"identifier:of-type={V2}|VN|V-100,{V2}|VN|loose-7") == [str(office)]
    assert search(f"identifier:of-type={V2}|MR|V-100") == []
    assert search(f"identifier:of-type={V2}|VN|loose-7") == []  # typed, but not that one
    assert search("identifier:missing=false") == sorted([str(office), str(checkup), str(untyped)])
    # Through a Patient search: the people with such an encounter.
    reply = client.get(f"/fhir/Patient?_has:Encounter:patient:type={ACT}|99396", headers=headers)
    assert reply.status_code == 200, reply.text
    assert _ids(reply.json()) == [other]
    for bad in (
        "identifier=",
        "type=",
        "type:exact=x",
        "identifier:missing=1",
        "identifier:not=",
        "identifier:of-type=VN|V-100",
    ):
        reply = client.get(f"/fhir/Encounter?{bad}", headers=headers)
        assert reply.status_code == 400, bad
        assert reply.json()["resourceType"] == "OperationOutcome"


def test_encounter_paging(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    person = add_patient()
    made = {
        str(add_encounter(person, start=f"2023-0{1 + i % 9}-01T00:00:00+00:00", end=None))
        for i in range(11)
    }
    for sort in ("", "&_sort=-date"):
        entries = _follow(client, headers, f"/fhir/Encounter?patient={person}&_count=4{sort}")
        ids = [e["resource"]["id"] for e in entries]
        assert len(ids) == 11 and set(ids) == made


def test_everything_pages_through_patient_encounters_and_provenance(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
    session_factory: sessionmaker[Session],
) -> None:
    person = add_patient()
    encounters = {str(add_encounter(person)) for _ in range(6)}
    with session_factory() as session:
        source = session.query(Source).one()
        records = []
        for rid in ("p-1", "p-2"):
            record = SourceRecord(source_id=source.id, resource_type="Patient", resource_id=rid)
            session.add(record)
            session.flush()
            records.append(record.id)
        session.add_all(
            [
                FieldProvenance(
                    golden_id=person,
                    field="name",
                    value="x",
                    source_record_id=records[0],
                    rule="trust",
                ),
                FieldProvenance(
                    golden_id=person,
                    field="birthDate",
                    value="x",
                    source_record_id=records[0],
                    rule="trust",
                ),
                FieldProvenance(
                    golden_id=person,
                    field="telecom",
                    value="x",
                    source_record_id=records[1],
                    rule="recency",
                ),
            ]
        )
        session.commit()
    entries = _follow(client, headers, f"/fhir/Patient/{person}/$everything?_count=3")
    types = [e["resource"]["resourceType"] for e in entries]
    assert types == ["Patient"] + ["Encounter"] * 6 + ["Provenance"] * 2
    assert {
        e["resource"]["id"] for e in entries if e["resource"]["resourceType"] == "Encounter"
    } == encounters
    provenance = entries[-2]["resource"]
    assert provenance["target"] == [{"reference": f"Patient/{person}"}]
    assert provenance["entity"][0]["what"]["identifier"]["value"] == "p-1"
    assert "birthDate" in provenance["entity"][0]["what"]["display"]
    from fhir.resources.R4B.provenance import Provenance

    Provenance.model_validate(provenance)
    assert client.get("/fhir/Patient/unknown/$everything", headers=headers).status_code == 404


def test_everything_takes_type_since_and_the_care_dates(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
    session_factory: sessionmaker[Session],
) -> None:
    """``_type``, ``_since``, ``start`` and ``end``
    (https://hl7.org/fhir/R4/patient-operation-everything.html): before, each was ignored
    and the whole record came back, a wider answer than asked."""
    person = add_patient()
    early = add_encounter(person, start="2023-01-10T08:00:00Z", end="2023-01-10T09:00:00Z")
    stay = add_encounter(person, start="2025-06-01T08:00:00Z", end="2025-06-03T12:00:00Z")
    undated = add_encounter(person, start=None, end=None)
    old, new = datetime(2020, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)
    with session_factory() as session:
        source = session.query(Source).one()
        for rid, observed in (("p-old", old), ("p-new", new)):
            record = SourceRecord(source_id=source.id, resource_type="Patient", resource_id=rid)
            session.add(record)
            session.flush()
            session.add(
                FieldProvenance(
                    golden_id=person,
                    field="name",
                    value="x",
                    source_record_id=record.id,
                    rule="trust",
                    observed_at=observed,
                )
            )
        for encounter_id, changed in ((early, old), (stay, new), (undated, new)):
            session.execute(
                update(Encounter).where(Encounter.id == encounter_id).values(last_updated=changed)
            )
        session.execute(
            update(GoldenPatient).where(GoldenPatient.id == person).values(last_updated=old)
        )
        session.commit()

    def everything(query: str) -> list[str]:
        url = f"/fhir/Patient/{person}/$everything?{query}"
        out = []
        for entry in _follow(client, headers, url):
            resource = entry["resource"]
            if resource["resourceType"] == "Provenance":
                out.append("Provenance/" + resource["entity"][0]["what"]["identifier"]["value"])
            else:
                out.append(f"{resource['resourceType']}/{resource['id']}")
        return out

    enc = {e: f"Encounter/{e}" for e in (early, stay, undated)}
    everyone = [f"Patient/{person}", enc[early], enc[stay], enc[undated]]
    assert everything("") == [*everyone, "Provenance/p-old", "Provenance/p-new"]
    assert everything("_type=Encounter") == [enc[early], enc[stay], enc[undated]]
    assert everything("_type=Patient,Provenance") == [
        f"Patient/{person}",
        "Provenance/p-old",
        "Provenance/p-new",
    ]
    assert everything("_type=Patient&_type=Encounter") == everyone
    assert everything("_type=Observation") == []
    assert everything("_type=Encounter,,") == [enc[early], enc[stay], enc[undated]]
    assert everything("start=2025-01-01") == [
        f"Patient/{person}",
        enc[stay],
        "Provenance/p-old",
        "Provenance/p-new",
    ]
    assert everything("end=2024&_type=Encounter") == [enc[early]]
    assert everything("start=2025-06-03&end=2025-06-03&_type=Encounter") == [enc[stay]]
    assert everything("_since=2025-01-01T00:00:00Z") == [
        enc[stay],
        enc[undated],
        "Provenance/p-new",
    ]
    # The parameters ride along in every next link: one encounter per page, all three.
    assert everything("_type=Encounter&_count=1") == [enc[early], enc[stay], enc[undated]]
    first = client.get(
        f"/fhir/Patient/{person}/$everything?_type=Encounter&start=2020&_count=1", headers=headers
    ).json()
    nxt = next(x["url"] for x in first["link"] if x["relation"] == "next")
    assert "_type=Encounter" in nxt and "start=2020" in nxt
    for bad, expression in (
        ("_type=Encouter", "_type"),
        ("_type=HumanName", "_type"),
        ("_type=DomainResource", "_type"),
        ("start=ge2025", "start"),
        ("end=2025-13", "end"),
        ("start=2026&end=2025", "start"),
        ("_since=gt2025", "_since"),
    ):
        reply = client.get(f"/fhir/Patient/{person}/$everything?{bad}", headers=headers)
        assert reply.status_code == 400, bad
        assert reply.json()["issue"][0]["expression"] == [expression], bad


@dataclass
class FakeCandidate:
    golden_id: str
    score: float
    grade: str


@pytest.fixture
def matched(state: GatewayState, add_patient: Callable[..., str]) -> list[str]:
    """Two golden records and a stand-in engine ranking them certain, then possible."""
    ids = [add_patient(family="Match"), add_patient(family="Match")]
    calls: list[dict[str, Any]] = []

    def matcher(
        session: Session, patient: Any, *, count: int, only_certain: bool
    ) -> list[FakeCandidate]:
        calls.append(
            {"family": patient.names[0].family_folded, "count": count, "only": only_certain}
        )
        return [FakeCandidate(ids[0], 25.0, "certain"), FakeCandidate(ids[1], 3.0, "possible")]

    state.matcher = matcher
    state.extras["calls"] = calls
    return ids


def _parameters(patient: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if patient is not None:
        params.append({"name": "resource", "resource": patient})
    if "only" in extra:
        params.append({"name": "onlyCertainMatches", "valueBoolean": extra["only"]})
    if "count" in extra:
        params.append({"name": "count", "valueInteger": extra["count"]})
    return {"resourceType": "Parameters", "parameter": params}


FHIR = {"Content-Type": "application/fhir+json"}


def test_match_returns_scored_graded_bundle(
    client: TestClient, headers: Headers, matched: list[str], state: GatewayState
) -> None:
    body = _parameters(patient_resource(family="Match"), count=5)
    reply = client.post("/fhir/Patient/$match", json=body, headers={**headers, **FHIR})
    assert reply.status_code == 200, reply.text
    bundle = reply.json()
    assert bundle["type"] == "searchset" and _ids(bundle) == matched
    first, second = bundle["entry"]
    assert (
        0.99 < first["search"]["score"] <= 1.0
        and 0 < second["search"]["score"] < first["search"]["score"]
    )
    assert first["search"]["extension"] == [
        {"url": "http://hl7.org/fhir/StructureDefinition/match-grade", "valueCode": "certain"}
    ]
    assert state.extras["calls"] == [{"family": "match", "count": 5, "only": False}]
    certain = client.post(
        "/fhir/Patient/$match",
        json=_parameters(patient_resource(), only=True),
        headers={**headers, **FHIR},
    )
    assert _ids(certain.json()) == matched[:1]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (_parameters(None), 400),
        (_parameters(patient_resource(), count=0), 400),
        (
            {
                "resourceType": "Parameters",
                "parameter": [{"name": "resource", "resource": {"resourceType": "Observation"}}],
            },
            422,
        ),
        (
            _parameters({"resourceType": "Patient", "birthDate": "not-a-date", "gender": "robot"}),
            422,
        ),
        (["not", "parameters"], 400),
    ],
)
def test_match_rejects_bad_input(
    client: TestClient, headers: Headers, matched: list[str], body: Any, status: int
) -> None:
    reply = client.post("/fhir/Patient/$match", json=body, headers={**headers, **FHIR})
    assert reply.status_code == status, reply.text
    assert reply.json()["resourceType"] == "OperationOutcome"


def test_match_body_limits_and_media_type(
    client: TestClient, headers: Headers, matched: list[str]
) -> None:
    huge = _parameters(patient_resource(family="x" * 70_000))
    assert (
        client.post("/fhir/Patient/$match", json=huge, headers={**headers, **FHIR}).status_code
        == 413
    )
    xml = client.post(
        "/fhir/Patient/$match",
        content=b"<Parameters/>",
        headers={**headers, "Content-Type": "application/fhir+xml"},
    )
    assert xml.status_code == 415
    broken = client.post("/fhir/Patient/$match", content=b"{not json", headers={**headers, **FHIR})
    assert broken.status_code == 400
    chunked = client.post(
        "/fhir/Patient/$match",
        content=iter([b"{" + b" " * 40_000, b" " * 40_000 + b"}"]),
        headers={**headers, **FHIR},
    )
    assert chunked.status_code == 413
    no_scope = client.post(
        "/fhir/Patient/$match", json=_parameters(patient_resource()), headers=FHIR
    )
    assert no_scope.status_code == 401


def test_unknown_route_and_method_are_outcomes(client: TestClient, headers: Headers) -> None:
    unknown = client.get("/fhir/Observation", headers=headers)
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith(
        "application/fhir+json"
    )
    wrong = client.put("/fhir/Patient/abc", headers=headers, json={})
    assert wrong.status_code == 405 and wrong.json()["issue"][0]["code"] == "not-supported"
    invalid = client.get("/fhir/Patient/abc/_history?_count=0", headers=headers)
    assert invalid.status_code == 400 and invalid.json()["resourceType"] == "OperationOutcome"


def test_merged_id_in_encounter_search_follows_the_survivor(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
    session_factory: sessionmaker[Session],
) -> None:
    survivor, loser = add_patient(), add_patient()
    enc = add_encounter(survivor)
    with session_factory() as session:
        repo = GoldenPatientRepository(session)
        golden = repo.read(loser)
        repo.save(golden, golden.resource, [], status="merged", merged_into=survivor)
        session.commit()
    reply = client.get(f"/fhir/Encounter?patient={loser}", headers=headers)
    assert _ids(reply.json()) == [str(enc)]


def test_every_bundle_is_valid_fhir_r4(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.encounter import Encounter as R4Encounter
    from fhir.resources.R4B.patient import Patient

    person = add_patient()
    add_patient()
    add_encounter(person)
    for url in (
        "/fhir/Patient?_count=1&_revinclude=Encounter:subject",
        "/fhir/Patient?_summary=count",
        "/fhir/Patient?_elements=name",
        f"/fhir/Patient/{person}/_history",
        f"/fhir/Patient/{person}/$everything",
        f"/fhir/Encounter?patient={person}",
    ):
        reply = client.get(url, headers=headers)
        assert reply.status_code == 200, url
        Bundle.model_validate(reply.json())
    Patient.model_validate(client.get(f"/fhir/Patient/{person}", headers=headers).json())
    encounter = client.get(f"/fhir/Encounter?patient={person}", headers=headers).json()
    R4Encounter.model_validate(encounter["entry"][0]["resource"])
