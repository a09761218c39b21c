"""A gap in a source's push notifications is owed a catch-up sync until one that started
after it finishes (sync.catchup): a catch-up lost or failed is started again by the
scheduler, with or without a schedule."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from askonce.runtime import build_runtime
from askonce.settings import Settings
from connectors import Source, SourceConfig, build_source
from gateway.auth import TokenService
from store.models import SyncCursor, SyncRun
from store.types import utcnow
from sync import catchup, due_sources, run_source
from sync.context import TaskContext
from sync.intake import PUSH_STATE_PREFIX, hash_intake_token, receive_notification
from sync.runner import start_or_resume
from tests.sekmet_server import SekmetFactory
from tests.sync.helpers import add_source, patient, records, write_ndjson
from tests.sync.test_intake import AUTH, TOKEN, backport_bundle

SECRET = "catch-up-test-secret-" + "k" * 24
PUSH_CONFIG = {"intake_token_sha256": hash_intake_token(TOKEN)}


def notify(factory: sessionmaker[Session], name: str, body: dict[str, Any]) -> bool:
    """Deliver one notification as the EHR would; whether it asked for a catch-up."""
    return receive_notification(factory, name, body, TOKEN)[1].gap


def push_source(session_factory: sessionmaker[Session], tmp_path: Path) -> int:
    """A source "ehr-push" with push intake on, over a folder holding one Patient."""
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient("p1", "First")])
    write_ndjson(folder, "Encounter", [])
    return add_source(session_factory, "ehr-push", base_url=str(folder), config=PUSH_CONFIG)


def heartbeat(since: int) -> dict[str, Any]:
    return backport_bundle("heartbeat", since=since)


def test_a_gap_is_owed_until_a_run_started_after_it_finishes(
    engine: Engine, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    source_id = push_source(session_factory, tmp_path)
    context = TaskContext(engine=engine, session_factory=session_factory)
    assert notify(session_factory, "ehr-push", backport_bundle("handshake", since=0)) is False
    with session_factory() as session:
        assert catchup.owed(session) == {}
        # A run is in flight (started before the gap) when the EHR's heartbeat shows one.
        start_or_resume(session, source_id)
        session.commit()
    assert notify(session_factory, "ehr-push", heartbeat(2)) is True
    with session_factory() as session:
        owed = catchup.owed_since(session, source_id)
        assert owed is not None and abs((utcnow() - owed).total_seconds()) < 60
        assert due_sources(session) == []  # the run in flight is not stalled
    # The catch-up takes the run over: it finishes, but it started before the gap, so it
    # may have read past the missed change. The debt stays, and the next run starts at
    # once: it settles the debt.
    done = run_source(context, source_id, max_pages=None)
    assert done.status == "ok"
    with session_factory() as session:
        assert catchup.owed(session) == {}
        assert due_sources(session) == []
        runs = session.scalars(select(SyncRun).order_by(SyncRun.id)).all()
        assert [r.status for r in runs] == ["ok", "ok"]
        assert done.run_id == runs[1].id and runs[1].started_at >= owed


def test_a_queued_worker_requeues_the_run_that_pays_a_later_debt(
    engine: Engine, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    source_id = push_source(session_factory, tmp_path)
    context = TaskContext(engine=engine, session_factory=session_factory)
    queued: list[tuple[int, int, str]] = []
    first = run_source(context, source_id, requeue=lambda *a: queued.append(a))
    with session_factory() as session:
        catchup.owe(session, source_id)  # a gap while the run is in flight
        session.commit()
    while queued:
        _, run_id, token = queued.pop()
        last = run_source(
            context, source_id, run_id=run_id, token=token, requeue=lambda *a: queued.append(a)
        )
    assert last.done and last.status == "ok" and last.run_id != first.run_id
    with session_factory() as session:
        assert catchup.owed(session) == {}


def test_a_full_sync_keeps_the_event_numbers_and_the_debt(
    engine: Engine, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Clearing a source's read positions (a full run, a new URL) is not a gap: the
    subscriptions' event numbers stay, and so does a debt no run has paid yet."""
    source_id = push_source(session_factory, tmp_path)
    context = TaskContext(engine=engine, session_factory=session_factory)
    notify(session_factory, "ehr-push", backport_bundle("handshake", since=0))
    assert notify(session_factory, "ehr-push", heartbeat(3)) is True
    with session_factory() as session:
        # A full run started and failed at once (its folder was gone): cursors cleared.
        run, _token = start_or_resume(session, source_id, full=True)
        run.status = "failed"
        session.commit()
        kept = session.scalars(
            select(SyncCursor.resource_type).where(SyncCursor.source_id == source_id)
        ).all()
        assert catchup.CATCH_UP_KEY in kept
        assert any(key.startswith(PUSH_STATE_PREFIX) for key in kept)
    # The same event count again is no gap: the subscription's state survived.
    assert notify(session_factory, "ehr-push", heartbeat(3)) is False
    assert run_source(context, source_id, full=True, max_pages=None).status == "ok"
    with session_factory() as session:
        assert catchup.owed(session) == {}
        assert [r.resource_id for r in records(session, source_id)] == ["p1"]


def test_a_subscription_that_handshakes_again_past_what_arrived_owes_a_catch_up(
    session_factory: sessionmaker[Session],
) -> None:
    """An EHR that stopped a Subscription (event 2 undelivered) and started it again
    handshakes with its count so far: 2 events, of which 1 arrived."""
    add_source(session_factory, "ehr-push", config=PUSH_CONFIG)
    assert notify(session_factory, "ehr-push", backport_bundle("handshake", since=0)) is False
    first = backport_bundle("event-notification", since=1, events=[(1, "Patient/p1")])
    first["entry"] = first["entry"][:1]
    first["entry"][0]["resource"]["notificationEvent"] = [{"eventNumber": "1"}]
    assert notify(session_factory, "ehr-push", first) is False
    assert notify(session_factory, "ehr-push", backport_bundle("handshake", since=2)) is True
    assert notify(session_factory, "ehr-push", backport_bundle("handshake", since=2)) is False


def test_a_failed_catch_up_is_tried_again_after_the_stall_window(
    engine: Engine, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    folder = tmp_path / "ehr"  # not there yet: the catch-up fails for good
    source_id = add_source(session_factory, "ehr-push", base_url=str(folder), config=PUSH_CONFIG)
    scheduled = add_source(session_factory, "nightly", base_url=str(folder), schedule="1d")
    context = TaskContext(engine=engine, session_factory=session_factory)
    notify(session_factory, "ehr-push", backport_bundle("handshake", since=0))
    assert notify(session_factory, "ehr-push", heartbeat(1)) is True
    assert run_source(context, source_id, max_pages=None).status == "failed"
    now = utcnow()
    with session_factory() as session:
        assert catchup.owed_since(session, source_id) is not None
        # "nightly" has never run, so it is due; the failed catch-up waits for the window.
        assert due_sources(session, now=now) == [scheduled]
        later = now + timedelta(seconds=61)
        assert due_sources(session, now=later, stall_after_s=60) == [source_id, scheduled]
    write_ndjson(folder, "Patient", [patient("p1", "First")])
    write_ndjson(folder, "Encounter", [])
    assert run_source(context, source_id, max_pages=None).status == "ok"
    with session_factory() as session:
        assert catchup.owed(session) == {}
        assert source_id not in due_sources(session, now=later, stall_after_s=60)


def test_a_focus_the_ehr_cannot_serve_is_left_to_the_catch_up(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    """An id-only notification whose focus the EHR fails to serve (503, after the retries)
    is taken all the same: the resources it carried are stored, the rest is owed to the
    catch-up, which reads it once the EHR answers. Answering an error instead would lose
    nothing either, but an EHR whose notifications fail may put its Subscription in error
    and stop sending."""
    down = {"on": True}
    served = patient("p-late", "Late")
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": served}],
    }
    reads: list[str] = []

    def ehr(request: httpx.Request) -> httpx.Response:
        reads.append(request.url.path)
        if down["on"]:
            return httpx.Response(503)
        if request.url.path.endswith("/Patient"):
            return httpx.Response(200, json=bundle)
        if request.url.path.endswith("/Encounter"):
            return httpx.Response(200, json={**bundle, "entry": []})
        return httpx.Response(200, json=served)

    def factory(config: SourceConfig) -> Source:
        return build_source(config, transport=httpx.MockTransport(ehr), sleep=lambda _s: None)

    source_id = add_source(
        session_factory,
        "ehr-push",
        kind="fhir",
        base_url="https://ehr.example/fhir",
        config={**PUSH_CONFIG, "max_attempts": 2, "requests_per_s": None},
    )
    body = backport_bundle(
        "event-notification",
        since=2,
        events=[(1, "Patient/p-late"), (2, "Patient/p-carried")],
        resources=[patient("p-carried", "Carried")],
    )
    result = receive_notification(session_factory, "ehr-push", body, TOKEN, source_factory=factory)[
        1
    ]
    assert (result.gap, result.fetched, result.unfetched, result.ingest.resources) == (
        True,
        0,
        1,
        1,
    )
    assert len(reads) == 2  # one read of p-late, retried once
    with session_factory() as session:
        assert [r.resource_id for r in records(session, source_id)] == ["p-carried"]
        assert catchup.owed_since(session, source_id) is not None
    down["on"] = False
    context = TaskContext(engine=engine, session_factory=session_factory)
    assert run_source(context, source_id, max_pages=None, source_factory=factory).status == "ok"
    with session_factory() as session:
        assert [r.resource_id for r in records(session, source_id)] == ["p-carried", "p-late"]
        assert catchup.owed(session) == {}


@pytest.mark.sekmet
def test_a_catch_up_the_ehr_was_down_for_is_made_up_when_it_is_back(
    engine: Engine, db_url: str, sekmet_factory: SekmetFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Embedded: the gap's catch-up runs in-process right after the notification's answer
    and fails (the EHR, a real sekmet-fhir server, is down). Nothing else would read the
    missed Patient: the source has no schedule and the EHR's next notifications show no new
    gap. Once the EHR is back, the server's scheduler tick makes the catch-up up."""
    server = sekmet_factory()
    first = server.create({k: v for k, v in patient("x", "Before").items() if k != "id"})
    runtime = build_runtime(
        Settings(database_url=db_url, secret_key=SECRET, sync_stall_after_s=0.5)
    )
    factory = runtime.session_factory
    source_id = add_source(
        factory,
        "ehr-push",
        kind="fhir",
        base_url=server.base_url,
        config={**PUSH_CONFIG, "max_attempts": 1, "timeout_s": 5.0},
    )
    assert run_source(TaskContext(engine=engine, session_factory=factory), source_id).status == "ok"
    missed = server.create({k: v for k, v in patient("x", "Missed").items() if k != "id"})
    server.stop()
    with TestClient(runtime.create_app()) as client:
        client.post("/intake/ehr-push", json=backport_bundle("handshake", since=0), headers=AUTH)
        assert client.post("/intake/ehr-push", json=heartbeat(1), headers=AUTH).status_code == 200
        # Not raised into the server (an "Exception in ASGI application"): logged by type.
        failed = [r for r in caplog.records if r.getMessage().startswith("background task")]
        assert [(r.task, r.error) for r in failed] == [  # type: ignore[attr-defined]
            ("askonce.sync.run_source", "TransientError")
        ]
        with factory() as session:
            run = session.scalars(select(SyncRun).order_by(SyncRun.id.desc())).first()
            assert run is not None and run.status == "running" and run.errors >= 1
            owed = catchup.owed_since(session, source_id)
            assert owed is not None
        # The operator sees the debt: the admin API, the metrics.
        admin = TokenService(SECRET).issue("operator", ["askonce.admin"])
        listed = client.get("/admin/sources", headers={"Authorization": f"Bearer {admin}"})
        entry = next(s for s in listed.json() if s["name"] == "ehr-push")
        assert entry["catch_up_owed_since"] == owed.isoformat()
        metrics = client.get("/metrics").text
        assert 'askonce_sync_catch_up_owed_timestamp_seconds{source="ehr-push"} ' in metrics
        # The EHR's next heartbeat shows no gap: only the debt remembers the missed change.
        assert client.post("/intake/ehr-push", json=heartbeat(1), headers=AUTH).status_code == 200
    server.restart()
    time.sleep(0.6)  # the failed run's heartbeat is past the stall window
    assert runtime.run_due() == [source_id]
    with factory() as session:
        stored = {r.resource_id for r in records(session, source_id)}
        assert stored == {first["id"], missed["id"]}
        assert catchup.owed(session) == {}
    assert runtime.run_due() == []
