"""Push intake: FHIR Subscription notifications (R4B backport and R4 classic) over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from askonce.runtime import build_runtime
from askonce.settings import Settings
from connectors import Page, Source, SourceConfig, build_source
from gateway import GatewayState, create_app
from gateway.intake import catch_up_trigger
from store.models import Encounter, GoldenPatient, Link, SyncCursor, SyncRun
from store.models import Source as SourceRow
from sync.intake import (
    IntakeDeniedError,
    hash_intake_token,
    parse_notification,
    receive_notification,
)
from sync.pipeline import ingest_page
from sync.runner import lock_source
from tests.sync.helpers import add_source, encounter, patient, records, write_ndjson

TOKEN = "intake-token-" + "z" * 24
SUBSCRIPTION = "https://ehr.example/fhir/Subscription/sub-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def backport_bundle(
    kind: str,
    *,
    since: int,
    events: list[tuple[int, str]] = (),  # type: ignore[assignment]
    resources: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """An R4B notification Bundle: SubscriptionStatus first, then the payload entries."""
    status = {
        "resourceType": "SubscriptionStatus",
        "status": "active",
        "type": kind,
        "eventsSinceSubscriptionStart": str(since),
        "subscription": {"reference": SUBSCRIPTION},
        "topic": "http://example.org/topic/patient-admission",
        "notificationEvent": [
            {"eventNumber": str(n), "focus": {"reference": ref}} for n, ref in events
        ],
    }
    entries = [{"fullUrl": "urn:uuid:status", "resource": status}]
    entries += [
        {"fullUrl": f"https://ehr.example/fhir/{r['resourceType']}/{r['id']}", "resource": r}
        for r in resources
    ]
    return {"resourceType": "Bundle", "type": "history", "entry": entries}


def r4_parameters_bundle(kind: str, since: int, events: list[tuple[int, str]]) -> dict[str, Any]:
    """The same on an R4 server: a Parameters resource with the backport status profile."""
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": SUBSCRIPTION}},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since)},
    ]
    for number, ref in events:
        params.append(
            {
                "name": "notification-event",
                "part": [
                    {"name": "event-number", "valueString": str(number)},
                    {"name": "focus", "valueReference": {"reference": ref}},
                ],
            }
        )
    status = {"resourceType": "Parameters", "parameter": params}
    return {"resourceType": "Bundle", "type": "history", "entry": [{"resource": status}]}


@pytest.fixture
def intake(
    session_factory: sessionmaker[Session], tmp_path: Any
) -> Iterator[tuple[TestClient, int, list[int]]]:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient("p-fetch", "Fetched"), patient("p2", "Second")])
    write_ndjson(folder, "Encounter", [encounter("e-fetch", "p-fetch")])
    source_id = add_source(
        session_factory,
        name="ehr-push",
        base_url=str(folder),
        config={"intake_token_sha256": hash_intake_token(TOKEN)},
    )
    state = GatewayState(
        engine=session_factory.kw["bind"],
        session_factory=session_factory,
        secret_key="intake-test-secret-" + "q" * 32,
    )
    app = create_app(state)
    caught_up: list[int] = []
    app.dependency_overrides[catch_up_trigger] = lambda: caught_up.append
    with TestClient(app) as client:
        yield client, source_id, caught_up


def test_handshake_and_heartbeat_are_answered_without_catch_up(intake: Any) -> None:
    client, _, caught_up = intake
    response = client.post(
        "/intake/ehr-push", json=backport_bundle("handshake", since=0), headers=AUTH
    )
    assert response.status_code == 200
    assert response.json()["resourceType"] == "OperationOutcome"
    heartbeat = client.post(
        "/intake/ehr-push", json=backport_bundle("heartbeat", since=0), headers=AUTH
    )
    assert heartbeat.status_code == 200
    assert caught_up == []


def test_full_resource_notifications_are_ingested(
    intake: Any, session_factory: sessionmaker[Session]
) -> None:
    client, source_id, caught_up = intake
    client.post("/intake/ehr-push", json=backport_bundle("handshake", since=0), headers=AUTH)
    body = backport_bundle(
        "event-notification",
        since=1,
        events=[(1, "Patient/p-full")],
        resources=[patient("p-full", "Pushed")],
    )
    assert client.post("/intake/ehr-push", json=body, headers=AUTH).status_code == 200
    with session_factory() as session:
        (record,) = records(session, source_id)
        assert (record.resource_id, record.status) == ("p-full", "active")
    assert caught_up == []


def test_id_only_notifications_fetch_the_resource_from_the_source(
    intake: Any, session_factory: sessionmaker[Session]
) -> None:
    client, source_id, _ = intake
    client.post("/intake/ehr-push", json=backport_bundle("handshake", since=0), headers=AUTH)
    body = r4_parameters_bundle(
        "event-notification",
        2,
        [(1, "https://ehr.example/fhir/Patient/p-fetch"), (2, "Encounter/e-fetch")],
    )
    assert client.post("/intake/ehr-push", json=body, headers=AUTH).status_code == 200
    with session_factory() as session:
        assert [r.resource_id for r in records(session, source_id)] == ["e-fetch", "p-fetch"]
        assert session.scalars(select(Encounter)).one().golden_id is not None


def test_a_type_the_source_is_not_synced_for_is_ignored(
    intake: Any, session_factory: sessionmaker[Session]
) -> None:
    """A source synced for Patients only (``--types Patient``; its Encounters come from
    elsewhere) takes no Encounter by push either: neither one named by an id-only
    notification nor one a classic rest-hook PUTs."""
    client, source_id, _ = intake
    with session_factory() as session:
        session.get_one(SourceRow, source_id).resource_types = ["Patient"]
        session.commit()
    client.post("/intake/ehr-push", json=backport_bundle("handshake", since=0), headers=AUTH)
    body = r4_parameters_bundle(
        "event-notification", 2, [(1, "Patient/p-fetch"), (2, "Encounter/e-fetch")]
    )
    named = client.post("/intake/ehr-push", json=body, headers=AUTH)
    assert named.status_code == 200
    assert "1 fetched" in named.text and "1 ignored" in named.text
    put = client.put(
        "/intake/ehr-push/Encounter/e-put", json=encounter("e-put", "p-fetch"), headers=AUTH
    )
    assert put.status_code == 200 and "1 ignored" in put.text
    carried = backport_bundle(
        "event-notification",
        since=3,
        events=[(3, "Encounter/e-full")],
        resources=[encounter("e-full", "p-fetch")],
    )
    full = client.post("/intake/ehr-push", json=carried, headers=AUTH)
    assert full.status_code == 200 and "1 ignored" in full.text  # the resource and its focus
    with session_factory() as session:
        assert [r.resource_id for r in records(session, source_id)] == ["p-fetch"]
        assert session.scalars(select(Encounter)).all() == []


def test_a_focus_the_source_no_longer_has_is_deleted(
    intake: Any, session_factory: sessionmaker[Session]
) -> None:
    client, source_id, _ = intake
    client.post("/intake/ehr-push", json=backport_bundle("handshake", since=0), headers=AUTH)
    pushed = backport_bundle(
        "event-notification",
        since=1,
        events=[(1, "Patient/p-gone")],
        resources=[patient("p-gone", "Gone")],
    )
    assert client.post("/intake/ehr-push", json=pushed, headers=AUTH).status_code == 200
    # The next event names it, id only, and the source answers that it has no such Patient.
    body = r4_parameters_bundle("event-notification", 2, [(2, "Patient/p-gone")])
    assert client.post("/intake/ehr-push", json=body, headers=AUTH).status_code == 200
    with session_factory() as session:
        (record,) = records(session, source_id)
        assert (record.resource_id, record.status) == ("p-gone", "deleted")
        golden_id = session.scalars(
            select(Link.golden_id).where(Link.source_record_id == record.id)
        ).one()
        golden = session.get(GoldenPatient, golden_id)
        assert golden is not None and golden.status == "deleted"


def test_a_gap_in_event_numbers_starts_a_catch_up_sync(intake: Any) -> None:
    client, source_id, caught_up = intake
    client.post("/intake/ehr-push", json=backport_bundle("handshake", since=0), headers=AUTH)
    first = backport_bundle("event-notification", since=1, events=[(1, "Patient/p2")])
    client.post("/intake/ehr-push", json=first, headers=AUTH)
    assert caught_up == []
    skipped = backport_bundle("event-notification", since=4, events=[(4, "Patient/p2")])
    client.post("/intake/ehr-push", json=skipped, headers=AUTH)
    assert caught_up == [source_id]
    # A heartbeat that reports more events than were received is a gap too.
    client.post("/intake/ehr-push", json=backport_bundle("heartbeat", since=6), headers=AUTH)
    assert caught_up == [source_id, source_id]


def test_r4_classic_ping_and_put(intake: Any, session_factory: sessionmaker[Session]) -> None:
    client, source_id, caught_up = intake
    assert client.post("/intake/ehr-push", headers=AUTH).status_code == 200
    assert caught_up == [source_id]
    resource = patient("p-put", "Classic")
    assert (
        client.put("/intake/ehr-push/Patient/p-put", json=resource, headers=AUTH).status_code == 200
    )
    mismatch = client.put("/intake/ehr-push/Patient/other", json=resource, headers=AUTH)
    assert mismatch.status_code == 400
    with session_factory() as session:
        assert [r.resource_id for r in records(session, source_id)] == ["p-put"]


def test_intake_needs_the_source_token(intake: Any, session_factory: sessionmaker[Session]) -> None:
    client, _, _ = intake
    body = backport_bundle("handshake", since=0)
    assert client.post("/intake/ehr-push", json=body).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert client.post("/intake/ehr-push", json=body, headers=wrong).status_code == 401
    assert client.post("/intake/nope", json=body, headers=AUTH).status_code == 404
    add_source(session_factory, name="no-push")
    denied = client.post("/intake/no-push", json=body, headers=AUTH)
    assert denied.status_code == 403
    assert denied.json()["resourceType"] == "OperationOutcome"


def test_unreadable_notifications_are_refused_with_an_operation_outcome(intake: Any) -> None:
    client, _, _ = intake
    bad = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"resource": {"resourceType": "Basic"}}],
    }
    response = client.post("/intake/ehr-push", json=bad, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["issue"][0]["severity"] == "error"
    not_json = client.post("/intake/ehr-push", content=b"{nope", headers=AUTH)
    assert not_json.status_code == 400


def test_parse_notification_reads_both_dialects() -> None:
    r4b = parse_notification(
        backport_bundle("event-notification", since=3, events=[(3, "Patient/x")])
    )
    r4 = parse_notification(r4_parameters_bundle("event-notification", 3, [(3, "Patient/x")]))
    for note in (r4b, r4):
        assert (note.kind, note.events_since_start, note.event_numbers, note.focus) == (
            "event-notification",
            3,
            [3],
            [("Patient", "x")],
        )
        assert note.subscription == SUBSCRIPTION


def test_a_gap_syncs_the_source_through_the_runtimes_task_queue(db_url: str, tmp_path: Any) -> None:
    """The real catch-up trigger, in an embedded runtime: the task is sent from the API's
    thread pool (a background task) and runs in-process, reading what was missed."""
    runtime = build_runtime(Settings(database_url=db_url, secret_key="s" * 40))
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient("p-missed", "Missed"), patient("p2", "Second")])
    source_id = add_source(
        runtime.session_factory,
        name="ehr-push",
        base_url=str(folder),
        config={"intake_token_sha256": hash_intake_token(TOKEN)},
    )
    with TestClient(runtime.create_app()) as client:
        client.post("/intake/ehr-push", json=backport_bundle("handshake", since=0), headers=AUTH)
        gap = backport_bundle(
            "event-notification",
            since=3,
            events=[(3, "Patient/p2")],
            resources=[patient("p2", "Second")],
        )
        assert client.post("/intake/ehr-push", json=gap, headers=AUTH).status_code == 200
    with runtime.session_factory() as session:
        assert [r.resource_id for r in records(session, source_id)] == ["p-missed", "p2"]
        run = session.scalars(select(SyncRun).where(SyncRun.source_id == source_id)).one()
        assert run.status == "ok"


class _HeldFetch:
    """A source whose ``fetch`` waits until the test lets it answer."""

    def __init__(self, config: SourceConfig, fetching: threading.Event, answer: threading.Event):
        self.inner: Source = build_source(config)
        self.fetching, self.answer = fetching, answer

    def fetch(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        self.fetching.set()
        assert self.answer.wait(30)
        return self.inner.fetch(resource_type, resource_id)

    def close(self) -> None:
        self.inner.close()


def _race_source(session_factory: sessionmaker[Session], tmp_path: Any) -> int:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient("p-slow", "Slow")])
    return add_source(
        session_factory,
        name="ehr-race",
        base_url=str(folder),
        config={"intake_token_sha256": hash_intake_token(TOKEN)},
    )


def _taker(session_factory: sessionmaker[Session], errors: list[BaseException]) -> Any:
    def take(body: dict[str, Any], **kwargs: Any) -> None:
        try:
            receive_notification(session_factory, "ehr-race", body, TOKEN, **kwargs)
        except BaseException as exc:
            errors.append(exc)

    return take


def _held_patient_intake(
    take: Any, fetching: threading.Event, answer: threading.Event
) -> threading.Thread:
    """An id-only notification of Patient p-slow, taken in a thread whose read of the
    Patient from the EHR waits for ``answer``; started."""
    note = r4_parameters_bundle("event-notification", 1, [(1, "Patient/p-slow")])
    held = threading.Thread(
        target=take,
        args=(note,),
        kwargs={"source_factory": lambda config: _HeldFetch(config, fetching, answer)},
    )
    held.start()
    return held


def _assert_attached(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        stored = session.scalars(select(Encounter)).one()
        golden = session.scalars(select(Link.golden_id)).one()
        assert stored.golden_id == golden
        statuses = {(r.resource_type, r.status) for r in records(session, stored.source_id)}
        assert statuses == {("Patient", "active"), ("Encounter", "active")}


def test_an_encounter_pushed_while_its_patient_is_taken_in_is_attached(
    session_factory: sessionmaker[Session], tmp_path: Any
) -> None:
    """A page of Patients is being taken in (its transaction holds the source's lock) when
    one Patient's Encounter is pushed whole. The Encounter's intake waits for the lock and
    then finds its Patient. Had it looked for the Patient first and waited only to write
    (SQLite's lock taken at the first write), it would have found none and been left
    pending: the Patient's page looked for waiting Encounters before it was stored."""
    source_id = _race_source(session_factory, tmp_path)
    errors: list[BaseException] = []
    pushed = threading.Thread(
        target=_taker(session_factory, errors), args=(encounter("e-slow", "p-slow"),)
    )
    with session_factory() as page_session:
        lock_source(page_session, source_id)
        ingest_page(page_session, source_id, Page("Patient", [patient("p-slow", "Slow")], None))
        pushed.start()
        try:
            pushed.join(0.5)  # the Encounter's intake looks (and waits) now
            assert pushed.is_alive()  # for the source's lock
        finally:
            page_session.commit()
    pushed.join(60)
    assert errors == []
    _assert_attached(session_factory)


def test_a_focus_is_read_from_the_ehr_before_the_source_is_locked(
    session_factory: sessionmaker[Session], tmp_path: Any
) -> None:
    """An id-only Patient notification waits on a slow EHR. It holds no lock meanwhile
    (on SQLite every writer would wait): the Patient's Encounter, pushed whole, is taken in
    at once and waits, pending, until the Patient arrives and attaches it."""
    source_id = _race_source(session_factory, tmp_path)
    fetching, answer = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    take = _taker(session_factory, errors)
    held = _held_patient_intake(take, fetching, answer)
    try:
        assert fetching.wait(30)
        pushed = threading.Thread(target=take, args=(encounter("e-slow", "p-slow"),))
        pushed.start()
        pushed.join(20)
        assert not pushed.is_alive()  # it did not wait for the held intake
        assert errors == []
        with session_factory() as session:
            assert session.scalars(select(Encounter.golden_id)).one() is None
            assert [r.status for r in records(session, source_id)] == ["pending"]
    finally:
        answer.set()
        held.join(60)
    assert errors == []
    _assert_attached(session_factory)


def test_a_source_disabled_while_the_ehr_answers_takes_nothing(
    session_factory: sessionmaker[Session], tmp_path: Any
) -> None:
    """The source is checked again once its lock is held: a notification whose source was
    disabled while its focus was being read stores nothing."""
    source_id = _race_source(session_factory, tmp_path)
    fetching, answer = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    held = _held_patient_intake(_taker(session_factory, errors), fetching, answer)
    try:
        assert fetching.wait(30)
        with session_factory() as session:
            session.get_one(SourceRow, source_id).enabled = False
            session.commit()
    finally:
        answer.set()
        held.join(60)
    assert [type(e) for e in errors] == [IntakeDeniedError]
    assert isinstance(errors[0], IntakeDeniedError) and errors[0].status == 404
    with session_factory() as session:
        assert records(session, source_id) == []
        assert session.scalars(select(SyncCursor)).all() == []
