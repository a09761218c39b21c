"""The admin API's reprocessing of quarantined records (the work: tests/sync/test_reprocess.py)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from store.models import Audit
from tests.sync.test_reprocess import quarantine_two, strict

__all__ = ["strict"]  # the fixture, used by name


def test_the_admin_api_reprocesses_and_is_audited(
    client: TestClient,
    auth_for: Callable[..., dict[str, str]],
    session_factory: sessionmaker[Session],
    strict: set[str],
) -> None:
    source_id = quarantine_two(session_factory, strict)
    admin = auth_for("askonce.admin", client_id="steward")
    reader = auth_for("system/Patient.rs")
    body = {"source_id": source_id, "resource_type": "Patient", "limit": 1}
    assert client.post("/admin/quarantine/reprocess", json=body, headers=reader).status_code == 403
    reply = client.post("/admin/quarantine/reprocess", json=body, headers=admin)
    assert reply.status_code == 200, reply.text
    assert {k: reply.json()[k] for k in ("reprocessed", "stored", "attached", "remaining")} == {
        "reprocessed": 1,
        "stored": 1,
        "attached": 1,  # p1 first (by record id), and e1 waited for it
        "remaining": 1,
    }
    rest = client.post("/admin/quarantine/reprocess", json={"source_id": source_id}, headers=admin)
    assert (rest.json()["reprocessed"], rest.json()["stored"], rest.json()["remaining"]) == (
        1,
        1,
        0,
    )
    for bad, status in (
        ({"source_id": source_id + 100}, 404),
        ({"source_id": source_id, "resource_type": "Observation"}, 400),
        ({"source_id": source_id, "limit": 100000}, 400),
        ({"source_id": source_id, "ids": []}, 400),
        ({}, 400),
    ):
        refused = client.post("/admin/quarantine/reprocess", json=bad, headers=admin)
        assert refused.status_code == status, (bad, refused.text)
        assert refused.json()["resourceType"] == "OperationOutcome"
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        actions = session.scalars(select(Audit.action).where(Audit.principal == "steward")).all()
    assert "admin-reprocess" in actions
