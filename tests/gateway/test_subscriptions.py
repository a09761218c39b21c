"""``/fhir/Subscription``: a consumer's topic-based Subscriptions (R4 backport), each
consumer seeing only its own; errors are OperationOutcomes naming the element."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.basic import Basic as FhirBasic
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.subscription import Subscription as FhirSubscription
from sqlalchemy.orm import Session, sessionmaker

from connectors import RestSource, SourceConfig, build_source
from connectors.topics import choose_topics, parse_topic, read_topics
from gateway import GatewayState, create_app
from gateway.auth import TokenService
from gateway.auth.consumers import register_consumer
from mpi.storage import emit
from store.models import Outbox, Subscription, SubscriptionEvent
from store.types import utcnow
from sync.delivery import ENCOUNTER_TOPIC, PATIENT_TOPIC, SUBSCRIPTION_PROFILE, fan_out
from sync.intake import parse_notification
from tests.gateway.conftest import free_port, serve_in_thread
from tests.sync.test_delivery import subscription_resource

FHIR_JSON = {"Content-Type": "application/fhir+json"}
ALL = ("system/Patient.rs", "system/Encounter.rs", "system/Subscription.cruds")
Auth = Callable[..., dict[str, str]]


@pytest.fixture
def consumer_auth(session_factory: sessionmaker[Session], auth_for: Auth) -> Auth:
    """Headers of a registered consumer with ``scopes`` (registered once per name)."""
    client_ids: dict[str, str] = {}

    def make(*scopes: str, name: str = "crm") -> dict[str, str]:
        if name not in client_ids:
            with session_factory() as session:
                creds = register_consumer(session, name, "crm", list(ALL))
                session.commit()
            client_ids[name] = creds.client_id
        return {**auth_for(*(scopes or ALL), client_id=client_ids[name]), **FHIR_JSON}

    return make


def create(client: TestClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    reply = client.post("/fhir/Subscription", json=subscription_resource(**fields), headers=headers)
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    assert reply.headers["location"] == f"http://testserver/fhir/Subscription/{body['id']}"
    return body


def test_a_consumer_creates_reads_and_searches_its_subscriptions(
    client: TestClient, consumer_auth: Auth, session_factory: sessionmaker[Session]
) -> None:
    headers = consumer_auth()
    made = create(client, headers, filters=("Patient?_id=g1",), heartbeat_s=120)
    FhirSubscription.model_validate(made)
    assert made["status"] == "requested"
    assert made["meta"]["profile"] == [SUBSCRIPTION_PROFILE]
    assert made["criteria"] == PATIENT_TOPIC.url
    assert made["channel"]["endpoint"] == "https://crm.example.org/fhir-hook"
    with session_factory() as session:
        row = session.get(Subscription, made["id"])
        assert row is not None
        assert (row.filters, row.heartbeat_s, row.payload_content) == (
            {"patients": ["g1"]},
            120,
            "id-only",
        )

    read = client.get(f"/fhir/Subscription/{made['id']}", headers=headers)
    assert read.status_code == 200
    assert read.json() == made

    other = create(client, headers, topic=ENCOUNTER_TOPIC.url, status="off")
    found = client.get("/fhir/Subscription", headers=headers).json()
    Bundle.model_validate(found)
    assert [e["resource"]["id"] for e in found["entry"]] == [made["id"], other["id"]]
    only_off = client.get("/fhir/Subscription", params={"status": "off"}, headers=headers).json()
    assert [e["resource"]["id"] for e in only_off["entry"]] == [other["id"]]
    lenient = client.get("/fhir/Subscription", params={"topic": "x"}, headers=headers)
    assert lenient.json()["total"] == 2  # an unknown parameter is ignored...
    strict = {**headers, "Prefer": "handling=strict"}
    bad = client.get("/fhir/Subscription", params={"topic": "x"}, headers=strict)
    assert bad.status_code == 400  # ...unless the client asks for strict handling
    assert bad.json()["resourceType"] == "OperationOutcome"


def test_another_consumers_subscription_does_not_exist_for_it(
    client: TestClient, consumer_auth: Auth
) -> None:
    mine = create(client, consumer_auth())
    theirs = consumer_auth(name="portal")
    for method in ("get", "delete"):
        reply = getattr(client, method)(f"/fhir/Subscription/{mine['id']}", headers=theirs)
        assert reply.status_code == 404, method
    reply = client.put(
        f"/fhir/Subscription/{mine['id']}",
        json={**subscription_resource(), "id": mine["id"]},
        headers=theirs,
    )
    assert reply.status_code == 404
    assert client.get("/fhir/Subscription", headers=theirs).json().get("entry") is None
    assert client.get(f"/fhir/Subscription/{mine['id']}/$status", headers=theirs).status_code == 404


def test_update_pauses_and_restarts_and_delete_ends(
    client: TestClient, consumer_auth: Auth, session_factory: sessionmaker[Session]
) -> None:
    headers = consumer_auth()
    made = create(client, headers)
    with session_factory() as session:  # as if the handshake and some events went out
        row = session.get(Subscription, made["id"])
        assert row is not None
        row.status, row.events_since_start, row.delivered_through = "active", 4, 4
        session.commit()

    paused = client.put(
        f"/fhir/Subscription/{made['id']}",
        json={**subscription_resource(status="off"), "id": made["id"]},
        headers=headers,
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "off"

    moved = client.put(
        f"/fhir/Subscription/{made['id']}",
        json=subscription_resource(endpoint="https://crm.example.org/new-hook"),
        headers=headers,
    )
    assert moved.json()["status"] == "requested"  # a new handshake first
    with session_factory() as session:
        row = session.get(Subscription, made["id"])
        assert row is not None
        # the event numbers go on: a receiver's gap detection keeps working
        assert (row.endpoint, row.events_since_start) == ("https://crm.example.org/new-hook", 4)

    wrong_id = client.put(
        f"/fhir/Subscription/{made['id']}",
        json={**subscription_resource(), "id": "another"},
        headers=headers,
    )
    assert wrong_id.status_code == 400

    with session_factory() as session:  # its queue
        session.add_all(
            SubscriptionEvent(subscription_id=made["id"], event_number=n, outbox_id=n)
            for n in (5, 6)
        )
        session.commit()
    assert client.delete(f"/fhir/Subscription/{made['id']}", headers=headers).status_code == 204
    assert client.get(f"/fhir/Subscription/{made['id']}", headers=headers).status_code == 404
    with session_factory() as session:  # the queue went with it
        assert session.query(SubscriptionEvent).count() == 0


def test_status_operation(client: TestClient, consumer_auth: Auth) -> None:
    headers = consumer_auth()
    made = create(client, headers)
    reply = client.get(f"/fhir/Subscription/{made['id']}/$status", headers=headers)
    assert reply.status_code == 200
    bundle = reply.json()
    Bundle.model_validate(bundle)
    assert bundle["type"] == "searchset"
    params = {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in bundle["entry"][0]["resource"]["parameter"]
    }
    assert params["type"] == "query-status"
    assert params["status"] == "requested"
    assert params["events-since-subscription-start"] == "0"
    assert params["subscription"] == {
        "reference": f"http://testserver/fhir/Subscription/{made['id']}"
    }


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        ({"criteria": "Patient?name=smith"}, "Subscription.criteria"),
        ({"channel": {"type": "websocket"}}, "Subscription.channel.type"),
        ({"channel": {"type": "rest-hook", "endpoint": "http://crm.example.org/h"}}, "endpoint"),
        ({"status": 7}, "Subscription.status"),
    ],
)
def test_a_subscription_that_cannot_be_honoured_is_a_400_naming_the_element(
    client: TestClient, consumer_auth: Auth, change: dict[str, Any], expression: str
) -> None:
    body = {**subscription_resource(), **change}
    reply = client.post("/fhir/Subscription", json=body, headers=consumer_auth())
    assert reply.status_code == 400, reply.text
    outcome = reply.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert expression in outcome["issue"][0]["expression"][0]


def test_malformed_and_oversized_bodies(client: TestClient, consumer_auth: Auth) -> None:
    headers = consumer_auth()
    reply = client.post("/fhir/Subscription", content=b"{not json", headers=headers)
    assert reply.status_code == 400
    reply = client.post("/fhir/Subscription", json={"resourceType": "Patient"}, headers=headers)
    assert reply.status_code == 400
    huge = {**subscription_resource(), "reason": "x" * (70 * 1024)}
    assert client.post("/fhir/Subscription", json=huge, headers=headers).status_code == 413


def test_scopes(client: TestClient, consumer_auth: Auth, auth_for: Auth) -> None:
    body = subscription_resource()
    # no Subscription scope
    reply = client.post("/fhir/Subscription", json=body, headers=consumer_auth("system/Patient.rs"))
    assert reply.status_code == 403
    # the topic's resource must be readable: notifications disclose what changed
    reply = client.post(
        "/fhir/Subscription",
        json=subscription_resource(topic=ENCOUNTER_TOPIC.url),
        headers=consumer_auth("system/Patient.rs", "system/Subscription.cruds"),
    )
    assert reply.status_code == 403
    assert "Encounter" in reply.json()["issue"][0]["diagnostics"]
    # a token whose client is not a registered consumer cannot own Subscriptions
    stranger = {**auth_for(*ALL, client_id="nobody"), **FHIR_JSON}
    assert client.post("/fhir/Subscription", json=body, headers=stranger).status_code == 403
    assert client.post("/fhir/Subscription", json=body, headers=FHIR_JSON).status_code == 401


def test_admin_registers_a_consumer_with_a_webhook_and_gets_its_secret_once(
    client: TestClient, auth_for: Auth, session_factory: sessionmaker[Session]
) -> None:
    admin = auth_for("askonce.admin")
    reply = client.post(
        "/admin/consumers",
        json={
            "name": "messaging",
            "kind": "messaging",
            "scopes": ["system/Patient.rs"],
            "webhook_url": "https://sms.example.org/askonce",
        },
        headers=admin,
    )
    assert reply.status_code == 201, reply.text
    secret = reply.json()["webhook_secret"]
    assert secret.startswith("whsec_")
    with session_factory() as session:
        (row,) = session.query(Subscription).all()
        assert (row.channel_type, row.status, row.filters) == (
            "webhook",
            "active",
            {"types": ["Patient"]},
        )
    # a webhook is not a FHIR Subscription: the FHIR API does not show it
    listed = client.get("/admin/consumers", headers=admin).json()
    assert "webhook_secret" not in listed[0]
    bad = client.post(
        "/admin/consumers",
        json={
            "name": "other",
            "kind": "crm",
            "scopes": ["system/Patient.rs"],
            "webhook_url": "http://sms.example.org/askonce",
        },
        headers=admin,
    )
    assert bad.status_code == 400
    assert bad.json()["issue"][0]["expression"] == ["webhook_url"]


def test_admin_lists_subscriptions_and_retries_one_in_backoff(
    client: TestClient,
    consumer_auth: Auth,
    auth_for: Auth,
    session_factory: sessionmaker[Session],
) -> None:
    made = create(client, consumer_auth())
    admin = auth_for("askonce.admin")
    with session_factory() as session:
        row = session.get(Subscription, made["id"])
        assert row is not None
        row.status, row.attempts, row.error = "error", 3, "the endpoint answered 503"
        row.next_attempt_at = utcnow() + timedelta(hours=1)
        row.events_since_start, row.delivered_through = 9, 4
        # its first unacknowledged event (number 5) was written two days ago
        written = utcnow().replace(microsecond=0) - timedelta(days=2)
        event = Outbox(
            event_type="patient.updated",
            aggregate_type="Patient",
            aggregate_id="g1",
            payload={},
            created_at=written,
        )
        session.add(event)
        session.flush()
        session.add(SubscriptionEvent(subscription_id=row.id, event_number=5, outbox_id=event.id))
        session.commit()
    listed = client.get("/admin/subscriptions", headers=admin).json()
    assert [(s["id"], s["consumer"], s["status"], s["pending"]) for s in listed] == [
        (made["id"], "crm", "error", 5)
    ]
    assert datetime.fromisoformat(listed[0]["oldest_pending_at"]) == written
    assert "headers" not in listed[0] and "secret" not in listed[0]
    assert client.get("/admin/subscriptions?status=active", headers=admin).json() == []
    assert client.get("/admin/subscriptions?status=bogus", headers=admin).status_code == 400

    retried = client.post(f"/admin/subscriptions/{made['id']}/retry", headers=admin)
    assert retried.status_code == 200
    assert retried.json()["next_attempt_at"] is None
    assert retried.json()["oldest_pending_at"] == listed[0]["oldest_pending_at"]
    assert client.post("/admin/subscriptions/nope/retry", headers=admin).status_code == 404
    assert client.get("/admin/subscriptions", headers=consumer_auth()).status_code == 403


def test_admin_gives_moves_rotates_and_ends_a_consumers_webhook(
    client: TestClient,
    consumer_auth: Auth,
    auth_for: Auth,
    session_factory: sessionmaker[Session],
) -> None:
    consumer_auth()  # registers "crm", with no webhook
    admin = auth_for("askonce.admin")
    (crm,) = client.get("/admin/consumers", headers=admin).json()
    route = f"/admin/consumers/{crm['client_id']}/webhook"

    given = client.put(route, json={"url": "https://crm.example.org/a"}, headers=admin).json()
    assert given["webhook_url"] == "https://crm.example.org/a"
    first_secret = given["webhook_secret"]
    assert first_secret.startswith("whsec_")

    def webhook() -> Subscription:
        with session_factory() as session:
            (row,) = session.query(Subscription).filter_by(channel_type="webhook").all()
            return row

    row = webhook()
    assert row.filters == {"types": ["Encounter", "Patient"]}
    moved = client.put(route, json={"url": "https://crm.example.org/b"}, headers=admin).json()
    assert moved == {"webhook_url": "https://crm.example.org/b", "webhook_secret": None}
    assert (webhook().id, webhook().secret) == (row.id, first_secret)  # same queue, same key
    rotated = client.put(
        route, json={"url": "https://crm.example.org/b", "rotate_secret": True}, headers=admin
    ).json()
    assert rotated["webhook_secret"] not in (None, first_secret)
    assert webhook().secret == rotated["webhook_secret"]
    bad = client.put(route, json={"url": "http://crm.example.org/c"}, headers=admin)
    assert bad.status_code == 400
    assert client.put(route, json={"url": None}, headers=admin).json()["webhook_url"] is None
    with session_factory() as session:
        assert session.query(Subscription).filter_by(channel_type="webhook").count() == 0
    assert client.get("/admin/consumers", headers=admin).json()[0]["webhook_url"] is None
    unknown = client.put("/admin/consumers/nope/webhook", json={"url": None}, headers=admin)
    assert unknown.status_code == 404


def test_events_operation_returns_past_notifications_by_number(
    client: TestClient,
    consumer_auth: Auth,
    session_factory: sessionmaker[Session],
    add_patient: Callable[..., str],
) -> None:
    headers = consumer_auth()
    made = create(client, headers)
    golden_id = add_patient(family="Okafor")
    with session_factory() as session:
        for n in range(3):
            emit(session, "patient.updated", golden_id if n == 1 else f"g{n}", version=n)
        fan_out(session)
        session.commit()
    route = f"/fhir/Subscription/{made['id']}/$events"

    reply = client.get(route, params={"eventsSinceNumber": "2"}, headers=headers)
    assert reply.status_code == 200, reply.text
    bundle = reply.json()
    Bundle.model_validate(bundle)
    note = parse_notification(bundle)
    assert note.kind == "query-event"
    assert note.event_numbers == [2, 3]
    assert note.focus == [("Patient", golden_id), ("Patient", "g2")]

    full = client.get(
        route,
        params={"eventsSinceNumber": "2", "eventsUntilNumber": "2", "content": "full-resource"},
        headers=headers,
    ).json()
    (entry,) = full["entry"][1:]
    assert entry["resource"]["id"] == golden_id
    assert entry["resource"]["name"][0]["family"] == "Okafor"
    everything = client.get(route, headers=headers).json()
    assert parse_notification(everything).event_numbers == [1, 2, 3]
    for bad in ({"eventsSinceNumber": "x"}, {"content": "all"}):
        assert client.get(route, params=bad, headers=headers).status_code == 400


def test_the_topics_are_read_as_backport_basic_resources(
    client: TestClient, auth_for: Auth
) -> None:
    """What each topic fires on, as the Backport IG keeps topics on an R4 server: whoever
    may subscribe (or read Basic) reads them, and askonce's own topic reader (the one
    ``askonce sources subscribe`` uses on an EHR) finds that each pushes every change."""
    subscriber = auth_for("system/Subscription.rs")
    reply = client.get("/fhir/Basic", params={"code": "SubscriptionTopic"}, headers=subscriber)
    assert reply.status_code == 200, reply.text
    bundle = reply.json()
    Bundle.model_validate(bundle)
    assert bundle["total"] == 2
    topics = {}
    for entry in bundle["entry"]:
        FhirBasic.model_validate(entry["resource"])
        topic = parse_topic(entry["resource"])
        assert topic is not None and entry["fullUrl"].endswith(f"/Basic/{entry['resource']['id']}")
        topics[topic.url] = topic
    assert set(topics) == {PATIENT_TOPIC.url, ENCOUNTER_TOPIC.url}
    assert topics[PATIENT_TOPIC.url].covers("Patient")
    assert topics[ENCOUNTER_TOPIC.url].covers("Encounter")
    choice = choose_topics(topics.values(), ["Patient", "Encounter"])
    assert choice.topics == {"Patient": PATIENT_TOPIC.url, "Encounter": ENCOUNTER_TOPIC.url}
    # The CapabilityStatement's canonicals are these topics.
    statement = client.get("/fhir/metadata").json()
    subscription = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")
    assert {e["valueCanonical"] for e in subscription["extension"]} == set(topics)
    # One read by its id; the search narrowed, and a Basic of any other kind not found.
    read = client.get("/fhir/Basic/patient-change", headers=auth_for("system/Basic.r"))
    assert read.status_code == 200 and parse_topic(read.json()) == topics[PATIENT_TOPIC.url]
    typed = "http://hl7.org/fhir/fhir-types|SubscriptionTopic"
    for params, total in (
        ({"code": typed, "_id": "encounter-change"}, 1),
        ({"code": "referral"}, 0),
        ({"code": "|SubscriptionTopic"}, 0),
        ({}, 2),
    ):
        found = client.get("/fhir/Basic", params=params, headers=subscriber).json()
        assert found["total"] == total, params
    missing = client.get("/fhir/Basic/nope", headers=subscriber)
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    strict = {**subscriber, "Prefer": "handling=strict"}
    assert client.get("/fhir/Basic", params={"name": "x"}, headers=strict).status_code == 400
    # Without the Basic or the Subscription scope: refused.
    refused = client.get("/fhir/Basic", headers=auth_for("system/Patient.rs"))
    assert refused.status_code == 403


def test_askonce_reads_the_topics_of_another_askonce(
    state: GatewayState, tokens: TokenService
) -> None:
    """A clinic's askonce subscribing to a hospital's: the connector finds the hospital's
    topics over HTTP, through a bearer token, and both cover their type."""
    port = free_port()
    token = tokens.issue("clinic", ["system/Subscription.rs"])
    with serve_in_thread(create_app(state), port):
        config = SourceConfig(
            kind="fhir",
            base_url=f"http://127.0.0.1:{port}/fhir",
            auth={"kind": "bearer", "token": token},
        )
        source = build_source(config)
        assert isinstance(source, RestSource)
        with source:
            found = read_topics(source)
            offered = source.capabilities().subscription_topics
    choice = choose_topics(found, ["Patient", "Encounter"], offered)
    assert choice.uncovered == () and set(choice.urls) == set(offered)
