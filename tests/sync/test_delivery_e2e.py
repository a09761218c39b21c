"""From an EHR's change to the consumer's endpoint, embedded mode, both backends.

A consumer subscribes through the FHIR API with its own token and registers a webhook;
an NDJSON source syncs through the runtime's own task; the runtime's delivery thread
sends to real HTTP receivers on loopback ports. Then a changed Patient in the EHR
reaches the consumer as a notification carrying its golden record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from askonce.runtime import Runtime, build_runtime
from askonce.settings import Settings
from gateway.auth.consumers import register_consumer
from store.models import Link, SourceRecord, Subscription
from sync.delivery import PATIENT_TOPIC, PAYLOAD_CONTENT_URL
from sync.intake import parse_notification
from sync.tasks import run_source
from tests.receiver import Receiver, running_receiver
from tests.sync.helpers import add_source, encounter, patient, write_ndjson

SCOPES = ["system/Patient.rs", "system/Encounter.rs", "system/Subscription.cruds"]
PEOPLE = [("p1", "Okafor", "Ngozi"), ("p2", "Tran", "Linh"), ("p3", "Miller", "Robert")]


@pytest.fixture
def runtime(db_url: str, engine: Any) -> Runtime:
    return build_runtime(
        Settings(
            database_url=db_url,
            delivery_interval_s=0.1,
            public_base_url="https://askonce.example",
        )
    )


@pytest.fixture
def hook() -> Iterator[Receiver]:
    yield from running_receiver()


@pytest.fixture
def webhook_receiver() -> Iterator[Receiver]:
    yield from running_receiver()


def _token(client: TestClient, client_id: str, secret: str) -> dict[str, str]:
    reply = client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert reply.status_code == 200, reply.text
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def _events(receiver: Receiver) -> list[tuple[int, str]]:
    """(event number, focus) of every event notification received, in arrival order."""
    out = []
    for request in receiver.received:
        note = parse_notification(request.json())
        if note.kind == "event-notification":
            out += [
                (n, f"{t}/{i}") for n, (t, i) in zip(note.event_numbers, note.focus, strict=True)
            ]
    return out


def test_an_ehr_change_reaches_the_subscriber_and_the_webhook(
    runtime: Runtime, hook: Receiver, webhook_receiver: Receiver, tmp_path: Path
) -> None:
    with runtime.unit_of_work() as session:
        creds = register_consumer(session, "crm", "crm", SCOPES, webhook_receiver.url)
    assert creds.webhook_secret is not None
    client = TestClient(runtime.create_app(), base_url="http://testserver")
    headers = _token(client, creds.client_id, creds.client_secret)
    body = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "profiles",
        "criteria": PATIENT_TOPIC.url,
        "channel": {
            "type": "rest-hook",
            "endpoint": hook.url,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": "full-resource"}]},
        },
    }
    made = client.post(
        "/fhir/Subscription",
        json=body,
        headers={**headers, "Content-Type": "application/fhir+json"},
    )
    assert made.status_code == 201, made.text
    sub_id = made.json()["id"]

    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient(rid, family, given) for rid, family, given in PEOPLE])
    write_ndjson(folder, "Encounter", [encounter("e1", "p1")])
    source_id = add_source(runtime.session_factory, base_url=str(folder))

    with runtime.delivery_loop():
        assert run_source.delay(source_id).get(timeout=60)["status"] == "ok"
        hook.wait_for(2)  # the handshake, then the three new golden Patients
        webhook_receiver.wait_for(4)  # three patient.created and one encounter.created
        golden_of = _goldens(runtime, source_id)
        _wait(lambda: len(_events(hook)) == 3, hook)
        assert _events(hook) == [
            (n, f"Patient/{golden_of[rid]}") for n, rid in ((1, "p1"), (2, "p2"), (3, "p3"))
        ]
        # full-resource: each golden Patient rides in the notification, as a read returns it
        bundles = [r.json() for r in hook.received[1:]]
        carried = [e["resource"] for b in bundles for e in b["entry"][1:]]
        assert {r["id"] for r in carried} == set(golden_of.values())
        assert all(r["resourceType"] == "Patient" for r in carried)
        references = [
            p["valueReference"]["reference"]
            for p in bundles[0]["entry"][0]["resource"]["parameter"]
            if p["name"] == "subscription"
        ]
        assert references == [f"https://askonce.example/fhir/Subscription/{sub_id}"]

        # Okafor moves: the EHR's change reaches the subscriber with the new address.
        moved = patient(
            "p1",
            "Okafor",
            "Ngozi",
            updated="2026-02-01T10:00:00Z",
            address=[{"line": ["1 New St"], "city": "Oakland", "postalCode": "94607"}],
        )
        write_ndjson(folder, "Patient", [moved, *[patient(r, f, g) for r, f, g in PEOPLE[1:]]])
        assert run_source.delay(source_id, full=True).get(timeout=60)["status"] == "ok"
        _wait(lambda: len(_events(hook)) == 4, hook)
    assert _events(hook)[3] == (4, f"Patient/{golden_of['p1']}")
    last = hook.received[-1].json()["entry"][1]["resource"]
    assert last["address"][0]["city"] == "Oakland"

    secret = creds.webhook_secret
    messages = [Webhook(secret).verify(r.body, r.headers) for r in webhook_receiver.received]
    assert [m["type"] for m in messages][:4] == [
        "patient.created",
        "patient.created",
        "patient.created",
        "encounter.created",
    ]
    assert messages[3]["data"]["golden_id"] == golden_of["p1"]
    assert messages[-1]["type"] == "patient.updated"
    with runtime.unit_of_work() as session:
        sub = session.get(Subscription, sub_id)
        assert sub is not None
        assert (sub.status, sub.delivered_through, sub.events_since_start) == ("active", 4, 4)


def _goldens(runtime: Runtime, source_id: int) -> dict[str, str]:
    with runtime.session_factory() as session:
        rows = session.execute(
            select(SourceRecord.resource_id, Link.golden_id)
            .join(Link, Link.source_record_id == SourceRecord.id)
            .where(SourceRecord.source_id == source_id, SourceRecord.resource_type == "Patient")
        ).all()
    return {rid: golden for rid, golden in rows}


def _wait(condition: Callable[[], bool], receiver: Receiver, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not delivered: {len(receiver.received)} requests")
