"""``PATCH /admin/sources/{id}``: pause, resume, reschedule and re-rank a source;
``DELETE /admin/sources/{id}``: remove it (the work itself:
tests/sync/test_source_lifecycle.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from askonce.runtime import build_runtime
from askonce.settings import Settings
from gateway.admin.routes import removal_trigger
from store.models import Audit, GoldenPatient
from store.models import Source as SourceRow
from sync import remove_source
from tests.sync.helpers import add_source, patient, write_ndjson
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


def test_delete_removes_a_source_after_the_answer_and_asks_for_its_name(
    client: TestClient,
    auth_for: Callable[..., dict[str, str]],
    session_factory: sessionmaker[Session],
) -> None:
    a, b = two_sources(session_factory)
    started: list[int] = []

    def remove_now(source_id: int) -> None:
        started.append(source_id)
        remove_source(session_factory, source_id)

    client.app.dependency_overrides[removal_trigger] = lambda: remove_now  # type: ignore[attr-defined]
    admin = auth_for("askonce.admin", client_id="operator")
    path = f"/admin/sources/{a}"
    assert (
        client.delete(f"{path}?confirm=a", headers=auth_for("system/Patient.rs")).status_code == 403
    )
    for bad_path, status in (
        (path, 400),  # no name
        (f"{path}?confirm=b", 400),  # another source's name
        (f"/admin/sources/{b + 100}?confirm=a", 404),
        ("/admin/sources/0?confirm=a", 400),
    ):
        refused = client.delete(bad_path, headers=admin)
        assert refused.status_code == status, (bad_path, refused.text)
        assert refused.json()["resourceType"] == "OperationOutcome"
    assert started == []
    with session_factory() as session:
        rosalind_id = golden_of(session, b, "r9").id
    reply = client.delete(f"{path}?confirm=a", headers=admin)
    assert reply.status_code == 202, reply.text
    assert reply.json() == {
        "source_id": a,
        "name": "a",
        "status": "removing",
        "records": {"Patient": 2, "Encounter": 2},
        "golden_records": 2,
    }
    assert started == [a]  # after the answer (the test client waits for it)
    with session_factory() as session:
        assert session.get(SourceRow, a) is None
        rosalind = session.get(GoldenPatient, rosalind_id)
        assert rosalind is not None and lines(rosalind) == ["9 Elm St"]
    assert [s["name"] for s in client.get("/admin/sources", headers=admin).json()] == ["b"]
    assert client.delete(f"{path}?confirm=a", headers=admin).status_code == 404
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        actions = session.scalars(select(Audit.action).where(Audit.principal == "operator"))
        assert "admin-source-remove" in set(actions)


def test_delete_runs_the_removal_task_in_the_embedded_runtime(db_url: str) -> None:
    runtime = build_runtime(Settings(database_url=db_url, secret_key="s" * 40))
    a, _b = two_sources(runtime.session_factory)
    with TestClient(runtime.create_app()) as client:
        tokens = client.app.state.tokens  # type: ignore[attr-defined]
        token = tokens.issue("operator", ["askonce.admin"])
        reply = client.delete(
            f"/admin/sources/{a}?confirm=a", headers={"Authorization": f"Bearer {token}"}
        )
        assert reply.status_code == 202, reply.text
    with runtime.session_factory() as session:
        assert session.get(SourceRow, a) is None


def test_a_source_being_removed_is_not_enabled_again_and_a_new_delete_finishes_it(
    client: TestClient,
    auth_for: Callable[..., dict[str, str]],
    session_factory: sessionmaker[Session],
) -> None:
    a, _b = two_sources(session_factory)
    overrides = client.app.dependency_overrides  # type: ignore[attr-defined]
    overrides[removal_trigger] = lambda: lambda source_id: None  # the worker died at once
    admin = auth_for("askonce.admin")
    assert client.delete(f"/admin/sources/{a}?confirm=a", headers=admin).status_code == 202
    listed = {s["name"]: s for s in client.get("/admin/sources", headers=admin).json()}
    assert listed["a"]["enabled"] is False and listed["a"]["removing_since"] is not None
    assert listed["b"]["removing_since"] is None
    refused = client.patch(f"/admin/sources/{a}", json={"enabled": True}, headers=admin)
    assert refused.status_code == 409, refused.text
    assert "being removed" in refused.json()["issue"][0]["diagnostics"]
    overrides[removal_trigger] = lambda: lambda source_id: remove_source(session_factory, source_id)
    assert client.delete(f"/admin/sources/{a}?confirm=a", headers=admin).status_code == 202
    with session_factory() as session:
        assert session.get(SourceRow, a) is None


def test_the_admin_api_checks_a_source_before_it_syncs(
    client: TestClient,
    auth_for: Callable[..., dict[str, str]],
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient("p1"), patient("p2", "Lee")])
    ready = add_source(session_factory, "ready", base_url=str(folder))
    missing = add_source(session_factory, "missing", base_url=str(tmp_path / "nowhere"))
    admin = auth_for("askonce.admin", client_id="operator")
    reply = client.post(f"/admin/sources/{ready}/check", headers=admin)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["source_id"], body["kind"], body["ok"]) == (ready, "ndjson", True)
    by_subject = {f["subject"]: f for f in body["findings"]}
    assert by_subject["Patient"]["level"] == "ok"
    assert by_subject["Patient"]["message"].startswith("1 file, ")
    assert by_subject["Encounter"]["level"] == "warning"  # no Encounter file: nothing to sync
    assert "Okafor" not in reply.text
    failed = client.post(f"/admin/sources/{missing}/check", headers=admin).json()
    assert failed["ok"] is False and failed["findings"][0]["level"] == "error"
    assert client.post("/admin/sources/999/check", headers=admin).status_code == 404
    reader = auth_for("system/Patient.rs")
    assert client.post(f"/admin/sources/{ready}/check", headers=reader).status_code == 403
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        actions = session.scalars(select(Audit.action).where(Audit.principal == "operator"))
        assert list(actions).count("admin-source-check") == 3
