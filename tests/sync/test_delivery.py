"""Delivery of the outbox's events to FHIR Subscriptions and webhooks (both backends).

The notifications are checked against the standards from outside: the FHIR ones are
validated by ``fhir.resources`` and read back by the push intake's own parser (which
reads what EHRs send us), the webhooks are verified by the ``standardwebhooks``
library. Fault cases use ``httpx.MockTransport``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from gateway.auth.consumers import register_consumer
from mpi.storage import emit
from store.events import outbox_row
from store.models import Audit, Consumer, Outbox, Subscription, SubscriptionEvent
from sync.delivery import (
    BACKOFF_MAX_S,
    ENCOUNTER_TOPIC,
    ERROR_AFTER_ATTEMPTS,
    FILTER_CRITERIA_URL,
    HEARTBEAT_URL,
    LEASE_S,
    MAX_COUNT_URL,
    PATIENT_TOPIC,
    PAYLOAD_CONTENT_URL,
    STATUS_PROFILE,
    DeliveryReport,
    apply_spec,
    backoff_s,
    deliver,
    fan_out,
    send_subscription,
    subscription_spec,
)
from sync.intake import parse_notification
from tests.sync.helpers import Clock, Endpoint

ENDPOINT = "https://crm.example.org/fhir-hook"
SCOPES = ["system/Patient.rs", "system/Encounter.rs", "system/Subscription.cruds"]


def subscription_resource(
    topic: str = PATIENT_TOPIC.url,
    *,
    endpoint: str = ENDPOINT,
    filters: tuple[str, ...] = (),
    content: str = "id-only",
    max_count: int | None = None,
    heartbeat_s: int | None = None,
    status: str = "requested",
    end: str | None = None,
) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "_payload": {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": content}]},
        "header": ["Authorization: Bearer crm-token"],
    }
    extensions = []
    if max_count is not None:
        extensions.append({"url": MAX_COUNT_URL, "valuePositiveInt": max_count})
    if heartbeat_s is not None:
        extensions.append({"url": HEARTBEAT_URL, "valueUnsignedInt": heartbeat_s})
    if extensions:
        channel["extension"] = extensions
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": status,
        "reason": "CRM profile sync",
        "criteria": topic,
        "channel": channel,
    }
    if filters:
        resource["_criteria"] = {
            "extension": [{"url": FILTER_CRITERIA_URL, "valueString": f} for f in filters]
        }
    if end is not None:
        resource["end"] = end
    return resource


def add_consumer(
    session_factory: sessionmaker[Session], name: str = "crm", webhook: str | None = None
) -> tuple[int, str | None]:
    with session_factory() as session:
        creds = register_consumer(session, name, "crm", SCOPES, webhook)
        session.commit()
        return creds.consumer_id, creds.webhook_secret


def subscribe(session_factory: sessionmaker[Session], consumer_id: int, **fields: Any) -> str:
    resource = subscription_resource(**fields)
    with session_factory() as session:
        sub = Subscription(consumer_id=consumer_id, events_since_start=0)
        apply_spec(sub, subscription_spec(resource), resource)
        session.add(sub)
        session.commit()
        return sub.id


def handshaken(
    session_factory: sessionmaker[Session], http: httpx.Client, clock: Clock, **fields: Any
) -> str:
    """A new consumer's Subscription, its handshake sent and taken: active."""
    consumer, _ = add_consumer(session_factory)
    sub_id = subscribe(session_factory, consumer, **fields)
    deliver(session_factory, client=http, clock=clock)
    return sub_id


def patient_event(
    session_factory: sessionmaker[Session], event: str, golden_id: str, **payload: Any
) -> None:
    with session_factory() as session:
        emit(session, event, golden_id, **payload)
        session.commit()


def encounter_event(session_factory: sessionmaker[Session], encounter_id: int, golden: str) -> None:
    with session_factory() as session:
        session.add(Outbox(**outbox_row("encounter.created", encounter_id, golden_id=golden)))
        session.commit()


def sub_row(session_factory: sessionmaker[Session], sub_id: str) -> Subscription:
    with session_factory() as session:
        sub = session.get(Subscription, sub_id)
        assert sub is not None
        return sub


def notification(body: dict[str, Any]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The status parameters (name -> value) and the notification events of a bundle,
    after checking it is a valid FHIR R4 history Bundle with the backport profile."""
    Bundle.model_validate(body)
    assert body["type"] == "history"
    status = body["entry"][0]["resource"]
    Parameters.model_validate(status)
    assert status["meta"]["profile"] == [STATUS_PROFILE]
    for entry in body["entry"]:
        assert "request" in entry and "response" in entry  # bdl-3 / bdl-4 of a history
    values = {
        p["name"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in status["parameter"]
        if p["name"] != "notification-event"
    }
    events = [p for p in status["parameter"] if p["name"] == "notification-event"]
    return values, events


def test_a_subscription_is_handshaken_then_gets_its_events_in_order(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    consumer, _ = add_consumer(session_factory)
    sub_id = subscribe(session_factory, consumer, max_count=2)
    for n in range(5):
        patient_event(session_factory, "patient.created", f"g{n}", source_record_id=n)
    encounter_event(session_factory, 7, "g0")  # another topic

    report = deliver(session_factory, client=http, base="https://askonce.example/fhir")

    assert report.events_fanned_out == 6
    assert report.events_queued == 5
    assert (report.handshakes, report.notifications, report.events_delivered) == (1, 4, 5)
    bodies = endpoint.bodies()
    values, events = notification(bodies[0])
    assert values["type"] == "handshake"
    assert values["status"] == "requested"
    assert values["topic"] == PATIENT_TOPIC.url
    assert values["subscription"] == {
        "reference": f"https://askonce.example/fhir/Subscription/{sub_id}"
    }
    assert events == []
    numbers, focus = [], []
    for body in bodies[1:]:
        values, events = notification(body)
        assert values["type"] == "event-notification"
        assert values["status"] == "active"
        for event in events:
            parts = {p["name"]: p for p in event["part"]}
            numbers.append(int(parts["event-number"]["valueString"]))
            focus.append(parts["focus"]["valueReference"]["reference"])
        # id-only: one entry per focus, with its URL and no resource
        assert [e["fullUrl"] for e in body["entry"][1:]] == focus[-len(events) :]
        assert all("resource" not in e for e in body["entry"][1:])
        first = focus[-len(events)].removeprefix("https://askonce.example/fhir/")
        assert body["entry"][1]["request"] == {"method": "POST", "url": first}
    assert numbers == [1, 2, 3, 4, 5]
    assert focus == [f"https://askonce.example/fhir/Patient/g{n}" for n in range(5)]
    assert [len(notification(b)[1]) for b in bodies[1:]] == [2, 2, 1]
    # the channel's headers ride along; the content type is FHIR's
    assert endpoint.requests[1].headers["authorization"] == "Bearer crm-token"
    assert endpoint.requests[1].headers["content-type"] == "application/fhir+json"
    sub = sub_row(session_factory, sub_id)
    assert (sub.status, sub.events_since_start, sub.delivered_through) == ("active", 5, 5)
    assert sub.next_attempt_at is None
    with session_factory() as session:
        assert session.scalar(select(func.count()).where(Outbox.delivered_at.is_(None))) == 0
    # nothing more is due
    assert not deliver(session_factory, client=http).busy


def test_our_notifications_read_back_through_the_push_intake_parser(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    consumer, _ = add_consumer(session_factory)
    subscribe(session_factory, consumer, topic=ENCOUNTER_TOPIC.url)
    encounter_event(session_factory, 11, "g1")
    encounter_event(session_factory, 12, "g1")
    deliver(session_factory, client=http)
    handshake, event = (parse_notification(b) for b in endpoint.bodies())
    assert handshake.kind == "handshake"
    assert event.kind == "event-notification"
    assert event.events_since_start == 2
    assert event.event_numbers == [1, 2]
    assert event.focus == [("Encounter", "11"), ("Encounter", "12")]


def test_filters_name_patients_and_follow_a_merge(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    consumer, _ = add_consumer(session_factory)
    patient_sub = subscribe(session_factory, consumer, filters=("Patient?_id=g1",))
    encounter_sub = subscribe(
        session_factory,
        consumer,
        topic=ENCOUNTER_TOPIC.url,
        filters=("Encounter?patient=Patient/g2",),
    )
    patient_event(session_factory, "patient.updated", "g1", version=2)
    patient_event(session_factory, "patient.updated", "g9", version=2)  # another patient
    encounter_event(session_factory, 1, "g1")
    encounter_event(session_factory, 2, "g2")
    # g1 is merged into g5: the filter follows it to the survivor
    patient_event(session_factory, "patient.merged", "g5", merged="g1")
    patient_event(session_factory, "patient.updated", "g5", version=3)

    deliver(session_factory, client=http)

    with session_factory() as session:
        queued = {
            sub_id: [
                o.aggregate_id
                for o in session.scalars(
                    select(Outbox)
                    .join(SubscriptionEvent, SubscriptionEvent.outbox_id == Outbox.id)
                    .where(SubscriptionEvent.subscription_id == sub_id)
                    .order_by(SubscriptionEvent.event_number)
                )
            ]
            for sub_id in (patient_sub, encounter_sub)
        }
    assert queued == {patient_sub: ["g1", "g5", "g5"], encounter_sub: ["2"]}
    assert sub_row(session_factory, patient_sub).filters == {"patients": ["g1", "g5"]}


def test_a_subscription_hears_only_events_after_it_began_and_off_or_inactive_hear_none(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    patient_event(session_factory, "patient.created", "before")
    consumer, _ = add_consumer(session_factory)
    live = subscribe(session_factory, consumer)
    off = subscribe(session_factory, consumer, status="off")
    gone_consumer, _ = add_consumer(session_factory, "old-crm")
    gone = subscribe(session_factory, gone_consumer)
    with session_factory() as session:
        row = session.get(Consumer, gone_consumer)
        assert row is not None
        row.active = False
        session.commit()
    patient_event(session_factory, "patient.created", "after")

    report = deliver(session_factory, client=http)

    assert report.events_fanned_out == 2
    assert [sub_row(session_factory, s).events_since_start for s in (live, off, gone)] == [1, 0, 0]
    assert len(endpoint.requests) == 2  # the live one's handshake and its one event


def test_failures_back_off_and_lose_nothing_then_the_status_recovers(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    clock = Clock()
    sub_id = handshaken(session_factory, http, clock)
    patient_event(session_factory, "patient.created", "g1")
    patient_event(session_factory, "patient.created", "g2")
    endpoint.answers = [503, httpx.ReadTimeout("slow"), httpx.ConnectError("refused")]

    for attempt in range(1, ERROR_AFTER_ATTEMPTS + 1):
        report = deliver(session_factory, client=http, clock=clock)
        assert report.failures == 1
        sub = sub_row(session_factory, sub_id)
        assert sub.attempts == attempt
        assert sub.delivered_through == 0
        assert sub.next_attempt_at is not None
        wait = (sub.next_attempt_at - clock.now).total_seconds()
        assert backoff_s(attempt) / 2 <= wait * 2 and wait <= BACKOFF_MAX_S
        # not due before its backoff is over
        assert deliver(session_factory, client=http, clock=clock).subscriptions == []
        clock.advance(wait + 1)
    sub = sub_row(session_factory, sub_id)
    assert sub.status == "error"
    assert sub.error == "the endpoint could not be reached (ConnectError)"

    report = deliver(session_factory, client=http, clock=clock)

    assert report.events_delivered == 2
    sub = sub_row(session_factory, sub_id)
    assert (sub.status, sub.attempts, sub.error, sub.delivered_through) == ("active", 0, None, 2)
    # the same two events were offered on every attempt, the same numbers each time
    offered = [notification(b)[1] for b in endpoint.bodies()[1:]]
    assert len(offered) == ERROR_AFTER_ATTEMPTS + 1
    assert all([p["part"][0]["valueString"] for p in events] == ["1", "2"] for events in offered)


def test_a_client_error_sets_the_error_status_at_once_and_a_failed_handshake_repeats(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    clock = Clock()
    consumer, _ = add_consumer(session_factory)
    sub_id = subscribe(session_factory, consumer)
    endpoint.answers = [404]
    deliver(session_factory, client=http, clock=clock)
    sub = sub_row(session_factory, sub_id)
    assert (sub.status, sub.error) == ("error", "the endpoint answered 404")
    clock.advance(BACKOFF_MAX_S)
    deliver(session_factory, client=http, clock=clock)
    kinds = [notification(b)[0]["type"] for b in endpoint.bodies()]
    assert kinds == ["handshake", "handshake"]
    assert sub_row(session_factory, sub_id).status == "active"


def test_heartbeats_come_when_nothing_else_was_sent(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    clock = Clock()
    handshaken(session_factory, http, clock, heartbeat_s=60)
    clock.advance(30)
    assert not deliver(session_factory, client=http, clock=clock).busy
    clock.advance(31)
    report = deliver(session_factory, client=http, clock=clock)
    assert report.heartbeats == 1
    values, events = notification(endpoint.bodies()[-1])
    assert (values["type"], events) == ("heartbeat", [])
    assert not deliver(session_factory, client=http, clock=clock).busy


def test_full_resource_and_empty_payloads(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    consumer, _ = add_consumer(session_factory)
    full = subscribe(session_factory, consumer, content="full-resource")
    deliver(session_factory, client=http)
    empty = subscribe(session_factory, consumer, content="empty")
    deliver(session_factory, client=http)
    patient_event(session_factory, "patient.updated", "g1", version=2)
    patient_event(session_factory, "patient.updated", "gone", version=2)
    rendered = {"resourceType": "Patient", "id": "g1", "active": True}

    def render(_session: Session, rtype: str, rid: str) -> dict[str, Any] | None:
        return rendered if (rtype, rid) == ("Patient", "g1") else None

    deliver(session_factory, client=http, render=render)

    by_sub: dict[str, dict[str, Any]] = {}
    for body in endpoint.bodies():
        values, _ = notification(body)
        if values["type"] == "event-notification":
            by_sub[values["subscription"]["reference"].rsplit("/", 1)[1]] = body
    entries = by_sub[full]["entry"][1:]
    assert entries[0]["resource"] == rendered
    assert "resource" not in entries[1]  # a resource that cannot be read is left out
    # the disclosure is audited like a read: the consumer, what it was given, from where
    with session_factory() as session:
        audits = session.scalars(select(Audit).where(Audit.action == "notify")).all()
        consumer = session.scalar(select(Consumer.client_id))
    assert [(a.principal, a.resource_type, a.resource_id, a.detail) for a in audits] == [
        (consumer, "Patient", "g1", {"ids": ["g1"], "subscription": full})
    ]
    _, events = notification(by_sub[empty])
    assert len(by_sub[empty]["entry"]) == 1  # empty: the status only, no focus
    assert all(p["name"] != "focus" for e in events for p in e["part"])


def test_webhooks_are_signed_as_standard_webhooks_and_carry_ids_only(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    _, secret = add_consumer(session_factory, webhook="https://crm.example.org/events")
    assert secret is not None and secret.startswith("whsec_")
    patient_event(session_factory, "patient.created", "g1", source_record_id=3)
    encounter_event(session_factory, 9, "g1")

    report = deliver(session_factory, client=http)

    assert (report.notifications, report.handshakes) == (2, 0)
    verified = []
    for request in endpoint.requests:
        assert str(request.url) == "https://crm.example.org/events"
        assert request.headers["content-type"] == "application/json"
        verified.append(Webhook(secret).verify(request.content, dict(request.headers)))
    assert [m["type"] for m in verified] == ["patient.created", "encounter.created"]
    assert verified[0]["data"]["reference"] == "Patient/g1"
    assert verified[1]["data"]["reference"] == "Encounter/9"
    assert verified[1]["data"]["golden_id"] == "g1"
    # the message id is the event's, stable across retries; a wrong secret fails
    assert endpoint.requests[0].headers["webhook-id"].startswith("msg_")
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + "A" * 43).verify(
            endpoint.requests[0].content, dict(endpoint.requests[0].headers)
        )


def test_a_webhook_carries_only_what_its_consumer_may_read(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    with session_factory() as session:
        register_consumer(
            session, "portal", "portal", ["system/Patient.rs"], "https://portal.example.org/e"
        )
        session.commit()
    patient_event(session_factory, "patient.created", "g1")
    encounter_event(session_factory, 9, "g1")
    deliver(session_factory, client=http)
    assert [json.loads(r.content)["type"] for r in endpoint.requests] == ["patient.created"]


def test_one_sender_at_a_time_and_a_dead_senders_lease_expires(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    clock = Clock()
    sub_id = handshaken(session_factory, http, clock)
    patient_event(session_factory, "patient.created", "g1")
    with session_factory() as session:
        fan_out(session)
        session.commit()
    # a sender claimed it and died before it could record anything
    with session_factory() as session:
        sub = session.get(Subscription, sub_id)
        assert sub is not None
        sub.next_attempt_at = clock.now + timedelta(seconds=LEASE_S)
        session.commit()
    report = DeliveryReport()
    send_subscription(session_factory, sub_id, http, report, deadline=clock.now + timedelta(60))
    assert report.subscriptions == [] and len(endpoint.requests) == 1
    clock.advance(LEASE_S + 1)
    assert deliver(session_factory, client=http, clock=clock).events_delivered == 1


def test_a_subscription_past_its_end_goes_off(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    consumer, _ = add_consumer(session_factory)
    sub_id = subscribe(session_factory, consumer, end="2020-01-01T00:00:00Z")
    patient_event(session_factory, "patient.created", "g1")
    deliver(session_factory, client=http)
    assert sub_row(session_factory, sub_id).status == "off"
    assert endpoint.requests == []


def test_concurrent_fan_outs_number_each_event_once(
    session_factory: sessionmaker[Session],
) -> None:
    consumer, _ = add_consumer(session_factory)
    sub_id = subscribe(session_factory, consumer)
    with session_factory() as session:
        for n in range(300):
            emit(session, "patient.created", f"g{n}")
        session.commit()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while True:
                with session_factory() as session:
                    step = fan_out(session, limit=25)
                    session.commit()
                if not step.events:
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_factory() as session:
        rows = session.execute(
            select(SubscriptionEvent.event_number, SubscriptionEvent.outbox_id).where(
                SubscriptionEvent.subscription_id == sub_id
            )
        ).all()
    assert sorted(n for n, _ in rows) == list(range(1, 301))
    assert len({o for _, o in rows}) == 300
    assert sub_row(session_factory, sub_id).events_since_start == 300


BAD: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    (lambda r: r.update(criteria="Patient?name=smith"), "Subscription.criteria"),
    (lambda r: r["channel"].update(type="email"), "Subscription.channel.type"),
    (lambda r: r["channel"].update(endpoint="http://crm.example.org/h"), "channel.endpoint"),
    (lambda r: r["channel"].update(endpoint="ftp://x/y"), "channel.endpoint"),
    (lambda r: r["channel"].update(header=["no colon"]), "Subscription.channel.header"),
    (lambda r: r["channel"].update(payload="text/plain"), "Subscription.channel.payload"),
    (
        lambda r: r["channel"]["_payload"]["extension"][0].update(valueCode="everything"),
        "payload.extension",
    ),
    (
        lambda r: r.update(
            _criteria={"extension": [{"url": FILTER_CRITERIA_URL, "valueString": "Patient?name=x"}]}
        ),
        "Subscription.criteria.extension",
    ),
    (
        lambda r: r["channel"].update(extension=[{"url": HEARTBEAT_URL, "valueUnsignedInt": 1}]),
        "heartbeatPeriod",
    ),
    (lambda r: r.update(status="error"), "Subscription.status"),
    (lambda r: r.update(status="sleepy"), "Subscription"),
]


@pytest.mark.parametrize(("spoil", "path"), BAD)
def test_a_subscription_this_server_cannot_honour_is_refused_with_its_element(
    spoil: Callable[[dict[str, Any]], None], path: str
) -> None:
    from sync.delivery import SubscriptionSettingsError

    resource = subscription_resource()
    spoil(resource)
    with pytest.raises(SubscriptionSettingsError) as caught:
        subscription_spec(resource)
    assert path in caught.value.path


def test_http_is_allowed_to_loopback_or_when_the_deployment_says_so() -> None:
    assert subscription_spec(subscription_resource(endpoint="http://127.0.0.1:9/h")).endpoint
    spec = subscription_spec(
        subscription_resource(endpoint="http://crm.internal/h"), allow_http=True
    )
    assert spec.endpoint == "http://crm.internal/h"


def test_a_webhook_round_that_fails_midway_keeps_what_was_acknowledged(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    clock = Clock()
    add_consumer(session_factory, webhook="https://crm.example.org/events")
    for n in range(4):
        patient_event(session_factory, "patient.created", f"g{n}")
    endpoint.answers = [200, 200, 500]
    report = deliver(session_factory, client=http, clock=clock)
    assert (report.events_delivered, report.failures) == (2, 1)
    with session_factory() as session:
        (sub,) = session.scalars(select(Subscription)).all()
        assert (sub.delivered_through, sub.attempts, sub.status) == (2, 1, "active")
    clock.advance(BACKOFF_MAX_S)
    assert deliver(session_factory, client=http, clock=clock).events_delivered == 2
    ids = [r.headers["webhook-id"] for r in endpoint.requests]
    assert len(ids) == 5 and ids[2] == ids[3]  # the failed one again, with its own id
    assert len(set(ids)) == 4
