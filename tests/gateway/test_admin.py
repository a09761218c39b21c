"""The admin API a steward uses: sources, runs, quarantine, review, links, consumers."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from store.models import Audit, Link, ReviewItem, Source, SourceRecord, SyncRun

Headers = dict[str, str]


@pytest.fixture
def admin(auth_for: Callable[..., dict[str, str]]) -> Headers:
    return auth_for("askonce.admin", client_id="steward")


@pytest.fixture
def seeded(
    session_factory: sessionmaker[Session], add_patient: Callable[..., str]
) -> dict[str, object]:
    golden_id = add_patient()
    with session_factory() as session:
        source = Source(
            name="ehr-a",
            kind="fhir",
            base_url="http://ehr.invalid",
            auth={"kind": "basic", "password_ref": "x"},
        )
        session.add(source)
        session.flush()
        good = SourceRecord(source_id=source.id, resource_type="Patient", resource_id="p1")
        bad = SourceRecord(
            source_id=source.id,
            resource_type="Patient",
            resource_id="p2",
            status="quarantined",
            raw={"resourceType": "Patient", "birthDate": "junk"},
            error={"issues": [{"path": "Patient.birthDate", "reason": "invalid date"}]},
        )
        session.add_all([good, bad])
        session.flush()
        session.add(
            Link(source_record_id=good.id, golden_id=golden_id, grade="certain", score=30.0)
        )
        session.add(SyncRun(source_id=source.id, status="ok", pages=3, resources=10, quarantined=1))
        session.add(
            ReviewItem(
                kind="possible-match",
                source_record_id=good.id,
                golden_id=golden_id,
                grade="possible",
                score=4.2,
            )
        )
        session.commit()
        return {"golden_id": golden_id, "source_id": source.id, "bad": bad.id}


def test_sources_runs_quarantine_review_links(
    client: TestClient,
    admin: Headers,
    seeded: dict[str, object],
    session_factory: sessionmaker[Session],
) -> None:
    sources = client.get("/admin/sources", headers=admin).json()
    assert [s["name"] for s in sources] == ["ehr-a"]
    assert sources[0]["auth_kind"] == "basic" and "password_ref" not in str(sources[0])
    assert sources[0]["latest_run"]["quarantined"] == 1
    assert (
        client.get(f"/admin/runs?source_id={seeded['source_id']}", headers=admin).json()[0]["pages"]
        == 3
    )
    quarantined = client.get("/admin/quarantine", headers=admin).json()
    assert [q["id"] for q in quarantined] == [seeded["bad"]] and "raw" not in quarantined[0]
    assert quarantined[0]["error"]["issues"][0]["path"] == "Patient.birthDate"
    with_raw = client.get("/admin/quarantine?raw=true", headers=admin).json()
    assert with_raw[0]["raw"]["birthDate"] == "junk"
    review = client.get("/admin/review", headers=admin).json()
    assert review[0]["grade"] == "possible" and review[0]["golden_id"] == seeded["golden_id"]
    links = client.get(f"/admin/golden/{seeded['golden_id']}/links", headers=admin).json()
    assert links["links"][0]["resource_id"] == "p1"
    assert client.get("/admin/golden/nope/links", headers=admin).status_code == 404
    assert client.get("/admin/runs?limit=100000", headers=admin).status_code == 400
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        actions = session.scalars(select(Audit.action).where(Audit.principal == "steward")).all()
    assert {"admin-quarantine", "admin-review", "admin-links"} <= set(actions)


def test_crosswalk_csv(client: TestClient, admin: Headers, seeded: dict[str, object]) -> None:
    reply = client.get("/admin/crosswalk.csv", headers=admin)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(reply.text)))
    assert rows[0] == ["golden_id", "source", "resource_type", "resource_id", "grade", "method"]
    assert rows[1] == [seeded["golden_id"], "ehr-a", "Patient", "p1", "certain", "AUTO"]


def test_consumers_register_list_and_deactivate(client: TestClient, admin: Headers) -> None:
    made = client.post(
        "/admin/consumers",
        json={"name": "portal", "kind": "portal", "scopes": ["system/Patient.rs"]},
        headers=admin,
    )
    assert made.status_code == 201
    creds = made.json()
    token = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
        },
    )
    assert token.status_code == 200
    listed = client.get("/admin/consumers", headers=admin).json()
    assert [c["name"] for c in listed] == ["portal"] and "secret" not in str(listed)
    dup = client.post(
        "/admin/consumers",
        json={"name": "portal", "kind": "portal", "scopes": ["system/Patient.rs"]},
        headers=admin,
    )
    assert dup.status_code == 409
    bad = client.post(
        "/admin/consumers",
        json={"name": "x", "kind": "crm", "scopes": ["everything"]},
        headers=admin,
    )
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    assert (
        client.delete(f"/admin/consumers/{creds['client_id']}", headers=admin).json()["active"]
        is False
    )
    refused = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
        },
    )
    assert refused.status_code == 401
