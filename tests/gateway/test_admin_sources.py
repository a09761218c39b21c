"""``PATCH /admin/sources/{id}``: pause, resume, reschedule and re-rank a source (the work
itself: tests/sync/test_source_lifecycle.py)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from store.models import Audit, GoldenPatient
from store.models import Source as SourceRow
from tests.sync.helpers import add_source
from tests.sync.test_source_lifecycle import golden_of, lines, two_sources


def test_the_admin_api_changes_a_source_and_is_audited(
    client: TestClient,
    auth_for: Callable[..., dict[str, str]],
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory, "x", schedule="1h")
    admin = auth_for("askonce.admin", client_id="operator")
    reader = auth_for("system/Patient.rs")
    path = f"/admin/sources/{source_id}"
    assert client.patch(path, json={"enabled": False}, headers=reader).status_code == 403
    paused = client.patch(path, json={"enabled": False}, headers=admin)
    assert paused.status_code == 200, paused.text
    assert paused.json()["changed"] == ["enabled"]
    unscheduled = client.patch(path, json={"schedule": None}, headers=admin)
    assert unscheduled.json()["changed"] == ["schedule"]
    kept = client.patch(path, json={}, headers=admin)
    assert kept.json()["changed"] == []
    with session_factory() as session:
        source = session.get(SourceRow, source_id)
        assert source is not None and (source.enabled, source.schedule) == (False, None)
    listed = client.get("/admin/sources", headers=admin).json()
    assert [(s["name"], s["enabled"]) for s in listed] == [("x", False)]
    for bad_path, body, status in (
        (f"/admin/sources/{source_id + 100}", {"enabled": True}, 404),
        (path, {"schedule": "whenever"}, 400),
        (path, {"enabled": None}, 400),
        (path, {"trust_rank": "high"}, 400),
        (path, {"base_url": "http://elsewhere"}, 400),
        ("/admin/sources/0", {"enabled": True}, 400),
    ):
        refused = client.patch(bad_path, json=body, headers=admin)
        assert refused.status_code == status, (body, refused.text)
        assert refused.json()["resourceType"] == "OperationOutcome"
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        actions = session.scalars(select(Audit.action).where(Audit.principal == "operator"))
        assert "admin-source-update" in set(actions)


def test_a_new_rank_through_the_api_renders_the_golden_records_again(
    client: TestClient,
    auth_for: Callable[..., dict[str, str]],
    session_factory: sessionmaker[Session],
) -> None:
    _a, b = two_sources(session_factory)
    admin = auth_for("askonce.admin")
    reply = client.patch(f"/admin/sources/{b}", json={"trust_rank": 95}, headers=admin)
    assert reply.status_code == 200, reply.text
    assert reply.json()["survivorship_changed"] is True
    # The refresh runs after the response (the test client waits for it).
    with session_factory() as session:
        golden: GoldenPatient = golden_of(session, b, "r9")
        assert lines(golden) == ["9 Elm St", "12 Harbor Way"]
