"""The Subscriptions askonce creates on an EHR (connectors.subscriptions) and their watch
(sync.subscriptions): a Subscription the EHR stopped is started again and what it did
not send is read by a catch-up sync. The whole round runs against sekmet-fhir, a FHIR
server with a Subscriptions Backport engine that we did not write."""

from __future__ import annotations

import itertools
import json
import re
import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Delete, Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from askonce.cli import app
from askonce.runtime import build_runtime
from askonce.settings import Settings, get_settings
from connectors import PermanentError, RestSource, Source, SourceConfig, build_source
from connectors.subscriptions import (
    BACKPORT,
    BACKPORT_PROFILE,
    EXT_HEARTBEAT_PERIOD,
    EXT_PAYLOAD_CONTENT,
    EhrSubscriptions,
    SubscriptionRequest,
    SubscriptionRequestError,
)
from gateway.auth import TokenService
from store import CursorRepository
from store.models import Encounter as EncounterRow
from store.models import Link, SourceRecord, SyncCursor
from store.models import Source as SourceRow
from store.types import utcnow
from sync import catchup
from sync.context import TaskContext
from sync.ehr_watch import watch
from sync.intake import (
    Payload,
    handle_notification,
    hash_intake_token,
    parse_notification,
    receive_notification,
)
from sync.retire import remove_source
from sync.runner import lock_source
from sync.subscriptions import (
    Managed,
    Plan,
    SubscribeError,
    managed,
    release,
    subscribe,
    unsubscribe,
)
from tests.connectors.helpers import basic_topic, searchset
from tests.gateway.conftest import free_port, serve_in_thread
from tests.integration.conftest import wait_for
from tests.sekmet_server import SekmetFactory
from tests.sync.helpers import add_source, encounter, patient, records
from tests.sync.test_intake import r4_parameters_bundle

TOKEN = "ehr-push-token-" + "t" * 24
SECRET = "subscription-test-secret-" + "s" * 24
TOPIC = "http://sekmet.dev/fhir/SubscriptionTopic/patient-change"
ENDPOINT = "https://askonce.example.org/intake/ehr"


# -- the Subscription resource ---------------------------------------------------------------


def test_a_topic_based_subscription_follows_the_backport_profile() -> None:
    request = SubscriptionRequest(
        endpoint=ENDPOINT,
        token=TOKEN,
        topic=TOPIC,
        content="id-only",
        heartbeat_s=60,
        filters=("Patient?identifier=urn:mrn|",),
    )
    resource = request.resource()
    assert resource["meta"]["profile"] == [BACKPORT_PROFILE]
    assert (resource["status"], resource["criteria"]) == ("requested", TOPIC)
    channel = resource["channel"]
    assert (channel["type"], channel["endpoint"]) == ("rest-hook", ENDPOINT)
    assert channel["header"] == [f"Authorization: Bearer {TOKEN}"]
    assert channel["_payload"]["extension"] == [
        {"url": EXT_PAYLOAD_CONTENT, "valueCode": "id-only"}
    ]
    assert channel["extension"] == [{"url": EXT_HEARTBEAT_PERIOD, "valueUnsignedInt": 60}]
    assert resource["_criteria"]["extension"][0]["valueString"] == "Patient?identifier=urn:mrn|"
    # A valid R4 Subscription (the R4B model reads R4's).
    from fhir.resources.R4B.subscription import Subscription

    Subscription.model_validate(resource)


def test_a_classic_subscription_and_what_cannot_be_asked() -> None:
    full = SubscriptionRequest(
        endpoint=ENDPOINT, token=TOKEN, criteria="Patient?", content="full-resource"
    )
    assert full.resource()["channel"]["payload"] == "application/fhir+json"
    assert "meta" not in full.resource()
    ping = SubscriptionRequest(endpoint=ENDPOINT, token=TOKEN, criteria="Patient?", content="empty")
    assert "payload" not in ping.resource()["channel"]
    for bad in (
        {"topic": TOPIC, "criteria": "Patient?"},
        {},
        {"criteria": "Patient"},
        {"criteria": "Patient?", "content": "id-only"},
        {"criteria": "Patient?", "content": "empty", "heartbeat_s": 60},
        {"topic": TOPIC, "content": "everything"},
        {"topic": TOPIC, "heartbeat_s": 0},
    ):
        with pytest.raises(SubscriptionRequestError):
            SubscriptionRequest(endpoint=ENDPOINT, token=TOKEN, **bad)
    with pytest.raises(SubscriptionRequestError):
        SubscriptionRequest(endpoint="ftp://x", token=TOKEN, topic=TOPIC)


# -- against a scripted EHR (httpx.MockTransport) ---------------------------------------------


class FakeEhr:
    """A FHIR server's Subscription endpoints, scripted: what it stores and answers."""

    def __init__(self) -> None:
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.down = False
        self.mask_headers = False
        self.ids = itertools.count(1)
        self.topics = [TOPIC]
        #: The topics' definitions, as R4 Basics (its ``Basic?code=SubscriptionTopic``).
        self.definitions: list[dict[str, Any]] | None = None
        #: Events counted per Subscription (its ``$status``; None: the operation is not
        #: offered).
        self.counts: dict[str, int] | None = {}
        self.refuse: str | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if self.down:
            return httpx.Response(503)
        parts = request.url.path.rstrip("/").split("/")
        if parts[-1] == "metadata":
            return httpx.Response(200, json=self.statement())
        if parts[-1] == "$status" and self.counts is not None:
            rid = parts[-2]
            if rid not in self.subscriptions:
                return httpx.Response(404)
            status = r4_parameters_bundle("query-status", self.counts.get(rid, 0), [])
            status["type"] = "searchset"
            reference = status["entry"][0]["resource"]["parameter"][0]["valueReference"]
            reference["reference"] = f"https://ehr.example/fhir/Subscription/{rid}"
            return httpx.Response(200, json=status)
        if parts[-1] == "Basic":
            if self.definitions is None:
                return httpx.Response(403)
            return httpx.Response(200, json=searchset(self.definitions))
        if request.method == "POST" and parts[-1] == "Subscription":
            body = json.loads(request.content)
            body["id"] = f"sub-{next(self.ids)}"
            if self.refuse:
                body.update(status="error", error=self.refuse)
            self.subscriptions[body["id"]] = body
            return httpx.Response(201, json=body)
        rid = parts[-1]
        stored = self.subscriptions.get(rid)
        if request.method == "DELETE":
            self.subscriptions.pop(rid, None)
            return httpx.Response(204)
        if stored is None:
            return httpx.Response(404)
        if request.method == "PUT":
            body = json.loads(request.content)
            body["status"] = "active"
            self.subscriptions[rid] = body
            return httpx.Response(200, json=body)
        shown = json.loads(json.dumps(stored))
        if self.mask_headers:
            shown["channel"]["header"] = ["Authorization: ****"]
        return httpx.Response(200, json=shown)

    def statement(self) -> dict[str, Any]:
        subscription: dict[str, Any] = {"type": "Subscription", "interaction": [{"code": "create"}]}
        if self.counts is not None:
            subscription["operation"] = [{"name": "status", "definition": "x"}]
        subscription["extension"] = [
            {
                "url": f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical",
                "valueCanonical": t,
            }
            for t in self.topics
        ]
        return {
            "resourceType": "CapabilityStatement",
            "fhirVersion": "4.0.1",
            "rest": [
                {
                    "mode": "server",
                    "resource": [{"type": "Patient"}, {"type": "Basic"}, subscription],
                }
            ],
        }

    def factory(self, config: SourceConfig) -> Source:
        return build_source(
            config, transport=httpx.MockTransport(self.handler), sleep=lambda _s: None
        )


#: A topic with a 30 s heartbeat, and a classic Subscription to Encounters.
PLAN = Plan(endpoint=ENDPOINT, topics=(TOPIC,), criteria=("Encounter?",), heartbeat_s=30)


def test_subscribe_sets_or_checks_the_intake_token(
    session_factory: sessionmaker[Session],
) -> None:
    ehr = FakeEhr()
    source_id = add_source(session_factory, "ehr", kind="fhir", base_url="https://ehr.example/fhir")
    done = subscribe(session_factory, "ehr", TOKEN, PLAN, source_factory=ehr.factory)
    assert done.token_set and [m.id for m in done.created] == ["sub-1", "sub-2"]
    assert ehr.subscriptions["sub-1"]["channel"]["header"] == [f"Authorization: Bearer {TOKEN}"]
    with session_factory() as session:
        kept = sorted(managed(session, source_id), key=lambda m: m.id)
        assert [(m.id, m.what, m.heartbeat_s, m.status) for m in kept] == [
            ("sub-1", TOPIC, 30, "requested"),
            ("sub-2", "Encounter?", None, "requested"),
        ]
        row = session.get(SourceRow, source_id)
        assert row is not None and row.config["intake_token_sha256"] == hash_intake_token(TOKEN)
        # No token in the database: only its hash.
        assert TOKEN not in json.dumps([m.as_json() for m in kept])
    # Asking again changes nothing; one the EHR deleted ("gone") is created again.
    again = subscribe(session_factory, "ehr", TOKEN, PLAN, source_factory=ehr.factory)
    assert again.created == [] and sorted(m.id for m in again.kept) == ["sub-1", "sub-2"]
    del ehr.subscriptions["sub-2"]
    with session_factory() as session:
        lost = next(m for m in managed(session, source_id) if m.id == "sub-2")
        lost.status = "gone"
        CursorRepository(session).set(source_id, lost.key, json.dumps(lost.as_json()))
        session.commit()
    renewed = subscribe(session_factory, "ehr", TOKEN, PLAN, source_factory=ehr.factory)
    assert [m.id for m in renewed.created] == ["sub-3"]
    with session_factory() as session:
        assert sorted(m.id for m in managed(session, source_id)) == ["sub-1", "sub-3"]
    # A topic the EHR does not offer is refused before anything is created; one the EHR
    # stores in error (a filter it cannot evaluate) is deleted there and reported.
    other_topic = Plan(endpoint=ENDPOINT, topics=(TOPIC + "-other",))
    with pytest.raises(SubscribeError, match="does not offer the topic"):
        subscribe(session_factory, "ehr", TOKEN, other_topic, source_factory=ehr.factory)
    ehr.refuse = "Unsupported filter"
    other = Plan(endpoint=ENDPOINT, criteria=("Patient?gender=x",))
    with pytest.raises(SubscribeError, match="Unsupported filter"):
        subscribe(session_factory, "ehr", TOKEN, other, source_factory=ehr.factory)
    ehr.refuse = None
    assert sorted(ehr.subscriptions) == ["sub-1", "sub-3"]
    # Another token is refused: it is not the one the EHR sends back.
    with pytest.raises(SubscribeError):
        subscribe(session_factory, "ehr", "another-token", PLAN, source_factory=ehr.factory)
    assert len(ehr.subscriptions) == 2
    gone = unsubscribe(session_factory, "ehr", ["sub-3"], source_factory=ehr.factory)
    assert [m.id for m in gone] == ["sub-3"] and list(ehr.subscriptions) == ["sub-1"]
    with pytest.raises(SubscribeError):
        unsubscribe(session_factory, "ehr", ["sub-9"], source_factory=ehr.factory)
    add_source(session_factory, "files", base_url="/tmp/x")
    with pytest.raises(SubscribeError):
        subscribe(session_factory, "files", TOKEN, PLAN)


def test_subscribe_chooses_the_topics_that_push_every_change(
    session_factory: sessionmaker[Session],
) -> None:
    """Without named topics or criteria: a topic for each synced type whose definition
    fires on every create and update, else a classic ``Type?`` (an id-only payload, which
    classic Subscriptions lack, leaves them the resource)."""
    ehr = FakeEhr()
    started = "http://ehr.example/topic/encounter-start"
    ehr.topics = [TOPIC, started, "http://ehr.example/topic/unlisted"]
    ehr.definitions = [
        basic_topic(TOPIC, "Patient", interactions=("create", "update", "delete")),
        basic_topic(started, "Encounter", fhirpath="%current.status = 'in-progress'"),
    ]
    add_source(
        session_factory,
        "ehr",
        kind="fhir",
        base_url="https://ehr.example/fhir",
        resource_types=["Patient", "Encounter"],
    )
    plan = Plan(endpoint=ENDPOINT, content="id-only", heartbeat_s=60)
    done = subscribe(session_factory, "ehr", TOKEN, plan, source_factory=ehr.factory)
    assert done.choice is not None and done.topics_unread is None
    assert done.choice.topics == {"Patient": TOPIC} and done.choice.uncovered == ("Encounter",)
    made = {m.what: (m.content, m.heartbeat_s) for m in done.created}
    assert made == {TOPIC: ("id-only", 60), "Encounter?": ("full-resource", None)}
    assert ("GET", "/fhir/Basic") in ehr.requests
    # Definitions the EHR does not let us read: classic Subscriptions, and the reason.
    ehr.definitions = None
    add_source(
        session_factory,
        "ehr-2",
        kind="fhir",
        base_url="https://ehr.example/fhir",
        config={"max_attempts": 1},
    )
    done = subscribe(
        session_factory, "ehr-2", TOKEN, Plan(endpoint=ENDPOINT + "-2"), source_factory=ehr.factory
    )
    assert done.topics_unread == "PermanentError"
    assert [m.what for m in done.created] == ["Patient?", "Encounter?"]
    # A plan that cannot be asked for is refused before the EHR is asked anything.
    ehr.requests.clear()
    for bad in (
        Plan(endpoint=ENDPOINT, criteria=("Patient?",), content="id-only"),
        Plan(endpoint=ENDPOINT, filters=("Patient?identifier=urn:mrn|",)),
    ):
        with pytest.raises(SubscriptionRequestError):
            subscribe(session_factory, "ehr", TOKEN, bad, source_factory=ehr.factory)
    assert ehr.requests == []


def test_a_requested_subscription_is_read_again_once_its_handshake_came() -> None:
    now = utcnow()
    item = Managed(
        source_id=1,
        id="s",
        what=TOPIC,
        content="id-only",
        heartbeat_s=None,
        endpoint=ENDPOINT,
        created_at=now - timedelta(seconds=60),
        checked_at=now - timedelta(seconds=30),
    )
    assert not item.due(now, 300)
    item.heard_at = now - timedelta(seconds=10)  # the handshake, after the last look
    assert item.due(now, 300)
    item.status = "active"
    assert not item.due(now, 300)


def test_a_subscription_made_by_hand_is_watched_once_it_notified_us(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    """An EHR admin made the Subscription by hand. Once it has notified us, the watch
    reads it like one of ours: stopped, it is started again and a catch-up is owed. Nothing
    askonce does on its own deletes it."""
    ehr = FakeEhr()
    made = SubscriptionRequest(endpoint=ENDPOINT, token=TOKEN, topic=TOPIC, heartbeat_s=60)
    ehr.subscriptions["sub-1"] = {**made.resource(), "id": "sub-1", "status": "active"}
    push = {"max_attempts": 1, "intake_token_sha256": hash_intake_token(TOKEN)}
    base = "https://ehr.example/fhir"
    source_id = add_source(session_factory, "ehr", kind="fhir", base_url=base, config=push)
    # A folder source, and a server source named by another server's reference: not adopted.
    files = add_source(session_factory, "files", config=push)
    other = "https://other.example/fhir"
    elsewhere = add_source(session_factory, "elsewhere", kind="fhir", base_url=other, config=push)
    context = TaskContext(engine=engine, session_factory=session_factory, subscription_check_s=60)

    def look(at: Any) -> list[tuple[int, str, str | None, bool, bool]]:
        return [
            (w.source_id, w.id, w.status, w.owed, w.reactivated)
            for w in watch(context, now=at, source_factory=ehr.factory)
        ]

    now = utcnow()
    assert look(now) == []  # nothing heard yet
    for name in ("ehr", "files", "elsewhere"):
        receive_notification(session_factory, name, r4_parameters_bundle("handshake", 0, []), TOKEN)
    assert look(now) == [(source_id, "sub-1", "active", False, False)]
    with session_factory() as session:
        [item] = managed(session, source_id)
        assert item.adopted and item.heard_at is not None
        assert (item.what, item.endpoint, item.content, item.heartbeat_s) == (
            TOPIC,
            ENDPOINT,
            "id-only",
            60,
        )
        assert managed(session, files) == [] and managed(session, elsewhere) == []
    # The EHR stopped it: a catch-up is owed, and it is asked to start again.
    ehr.subscriptions["sub-1"]["status"] = "error"
    assert look(now + timedelta(seconds=61)) == [(source_id, "sub-1", "active", True, True)]
    # Subscribing to its topic at its endpoint keeps it rather than making a second one.
    plan = Plan(endpoint=ENDPOINT, topics=(TOPIC,))
    done = subscribe(session_factory, "ehr", TOKEN, plan, source_factory=ehr.factory)
    assert done.created == [] and [m.id for m in done.kept] == ["sub-1"]
    # Neither "unsubscribe" without ids nor the source's removal deletes it.
    assert unsubscribe(session_factory, "ehr", source_factory=ehr.factory) == []
    assert release(session_factory, source_id, source_factory=ehr.factory) == 0
    assert list(ehr.subscriptions) == ["sub-1"]
    # Deleted on the EHR: "gone", one catch-up owed, and it is not read again.
    del ehr.subscriptions["sub-1"]
    assert look(now + timedelta(seconds=200)) == [(source_id, "sub-1", "gone", True, False)]
    assert look(now + timedelta(seconds=400)) == []
    # Named by its id, it is forgotten with the intake's event numbers of it.
    gone = unsubscribe(session_factory, "ehr", ["sub-1"], source_factory=ehr.factory)
    assert [m.id for m in gone] == ["sub-1"]
    assert look(now + timedelta(seconds=600)) == []
    with session_factory() as session:
        assert managed(session, source_id) == []


def test_removing_a_source_deletes_its_subscriptions_on_the_ehr(
    session_factory: sessionmaker[Session],
) -> None:
    ehr = FakeEhr()
    source_id = add_source(session_factory, "ehr", kind="fhir", base_url="https://ehr.example/fhir")
    subscribe(session_factory, "ehr", TOKEN, PLAN, source_factory=ehr.factory)
    ehr.down = True  # an EHR that cannot delete them now does not stop the removal
    result = remove_source(session_factory, source_id, source_factory=ehr.factory)
    assert result.removed and result.unsubscribed == 0 and len(ehr.subscriptions) == 2
    other = add_source(session_factory, "ehr-2", kind="fhir", base_url="https://ehr.example/fhir")
    ehr.down = False
    subscribe(session_factory, "ehr-2", TOKEN, PLAN, source_factory=ehr.factory)
    result = remove_source(session_factory, other, source_factory=ehr.factory)
    assert result.removed and result.unsubscribed == 2
    assert sorted(ehr.subscriptions) == ["sub-1", "sub-2"]  # the first source's, left there


def test_the_watch_acts_on_what_the_ehr_says(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    ehr = FakeEhr()
    source_id = add_source(
        session_factory,
        "ehr",
        kind="fhir",
        base_url="https://ehr.example/fhir",
        config={"max_attempts": 1},
    )
    subscribe(session_factory, "ehr", TOKEN, PLAN, source_factory=ehr.factory)
    context = TaskContext(engine=engine, session_factory=session_factory, subscription_check_s=60)
    now = utcnow()

    def look(at: Any) -> dict[str, tuple[str | None, bool, bool]]:
        return {
            w.id: (w.status, w.owed, w.reactivated)
            for w in watch(context, now=at, source_factory=ehr.factory)
        }

    def owed() -> bool:
        with session_factory() as session:
            return catchup.owed_since(session, source_id) is not None

    # The EHR made them active: nothing owed. Read again only after the interval.
    for sub in ehr.subscriptions.values():
        sub["status"] = "active"
    assert look(now) == {"sub-1": ("active", False, False), "sub-2": ("active", False, False)}
    assert look(now + timedelta(seconds=10)) == {}
    # Topic-based sub-1 has a 30 s heartbeat and nothing came for 61 s: read sooner; still
    # "active", so the notifications are lost on the way: a catch-up is owed.
    assert look(now + timedelta(seconds=61)) == {
        "sub-1": ("active", True, False),
        "sub-2": ("active", False, False),
    }
    assert owed()
    with session_factory() as session:
        session.execute(catchup_rows_deleted())
        session.commit()
    # The EHR stopped sub-1 after failed notifications: owed, and asked to start again.
    ehr.subscriptions["sub-1"].update(status="error", error="delivery failed")
    later = now + timedelta(seconds=200)
    assert look(later)["sub-1"] == ("active", True, True)
    assert ehr.subscriptions["sub-1"]["status"] == "active"
    assert "error" not in json.loads(json.dumps(ehr.subscriptions["sub-1"]))
    assert ehr.subscriptions["sub-1"]["channel"]["header"] == [f"Authorization: Bearer {TOKEN}"]
    # The EHR deleted sub-2: owed, "gone" (the operator subscribes again).
    del ehr.subscriptions["sub-2"]
    assert look(later + timedelta(seconds=300))["sub-2"] == ("gone", True, False)
    # A server that masks the header when read is not given the mask back.
    ehr.mask_headers = True
    ehr.subscriptions["sub-1"]["status"] = "off"
    seen = look(later + timedelta(seconds=600))["sub-1"]
    assert seen == ("off", True, False)
    assert ehr.subscriptions["sub-1"]["status"] == "off"
    with session_factory() as session:
        one = next(m for m in managed(session, source_id) if m.id == "sub-1")
        assert one.error == "not restarted: PermanentError"
    # The EHR is down: nothing is decided on no answer.
    with session_factory() as session:
        session.execute(catchup_rows_deleted())
        session.commit()
    ehr.down = True
    assert look(later + timedelta(seconds=900))["sub-1"] == ("unreachable", False, False)
    assert not owed()


def test_the_watch_reads_the_count_of_events_and_owes_what_never_arrived(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    """No heartbeat, no error: the EHR counted two events whose notifications never came
    (askonce's database was restored from last night's backup, or a proxy dropped them).
    Its ``$status`` shows it at the next look, not at the next event, hours later."""
    ehr = FakeEhr()
    push = {"max_attempts": 1}
    base = "https://ehr.example/fhir"
    source_id = add_source(session_factory, "ehr", kind="fhir", base_url=base, config=push)
    no_heartbeat = Plan(endpoint=ENDPOINT, topics=(TOPIC,), criteria=("Encounter?",))
    subscribe(session_factory, "ehr", TOKEN, no_heartbeat, source_factory=ehr.factory)
    for sub in ehr.subscriptions.values():
        sub["status"] = "active"
    # The handshake (0 events so far) names sub-1 as r4_parameters_bundle does.
    receive_notification(session_factory, "ehr", r4_parameters_bundle("handshake", 0, []), TOKEN)
    context = TaskContext(engine=engine, session_factory=session_factory, subscription_check_s=60)

    def look(at: Any) -> dict[str, tuple[bool, bool]]:
        seen = watch(context, now=at, source_factory=ehr.factory)
        return {w.id: (w.owed, w.lost) for w in seen}

    def heard() -> Any:
        with session_factory() as session:
            return next(m for m in managed(session, source_id) if m.id == "sub-1").heard_at

    def owed() -> bool:
        with session_factory() as session:
            return catchup.owed_since(session, source_id) is not None

    now = utcnow()
    handshake = heard()
    assert handshake is not None
    assert look(now) == {"sub-1": (False, False), "sub-2": (False, False)}
    assert not owed() and heard() == handshake  # reading the count is not hearing from it
    ehr.counts = {"sub-1": 2}
    assert look(now + timedelta(seconds=61))["sub-1"] == (True, True)
    assert owed() and heard() == handshake
    with session_factory() as session:
        session.execute(catchup_rows_deleted())
        session.commit()
    # Owed once: the count is now the last event, and event 3 is no gap.
    assert look(now + timedelta(seconds=122))["sub-1"] == (False, False)
    assert not owed()
    third = r4_parameters_bundle("event-notification", 3, [(3, "Patient/p3")])
    assert (
        receive_notification(session_factory, "ehr", third, TOKEN, source_factory=ehr.factory)[
            1
        ].gap
        is False
    )
    # The classic Subscription has no count to read.
    asked = [path for method, path in ehr.requests if path.endswith("$status")]
    assert asked and all("sub-1" in path for path in asked)
    # A server that does not offer $status is not asked.
    ehr.counts, ehr.requests = None, []
    watch(context, now=now + timedelta(seconds=400), source_factory=ehr.factory)
    assert not [path for _m, path in ehr.requests if path.endswith("$status")]


def test_the_watch_reads_the_count_after_a_notification_in_flight_is_taken_in(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    """The EHR counts one event when the watch reads ``$status``, and that event's
    notification is being taken in at the same moment. The watch compares the count with
    the last event under the source's lock, as the intake writes it: it waits for the
    intake and finds nothing lost. Read before the intake committed, the count would have
    owed a catch-up for an event that arrived."""
    ehr = FakeEhr()
    source_id = add_source(
        session_factory, "ehr", kind="fhir", base_url="https://ehr.example/fhir", config={}
    )
    plan = Plan(endpoint=ENDPOINT, topics=(TOPIC,), criteria=("Encounter?",))
    subscribe(session_factory, "ehr", TOKEN, plan, source_factory=ehr.factory)
    for sub in ehr.subscriptions.values():
        sub["status"] = "active"
    receive_notification(session_factory, "ehr", r4_parameters_bundle("handshake", 0, []), TOKEN)
    ehr.counts = {"sub-1": 1}
    context = TaskContext(engine=engine, session_factory=session_factory, subscription_check_s=60)
    seen: list[Any] = []
    errors: list[BaseException] = []

    def look() -> None:
        try:
            seen.extend(watch(context, now=utcnow(), source_factory=ehr.factory))
        except BaseException as exc:
            errors.append(exc)

    looking = threading.Thread(target=look)
    with session_factory() as intake:
        lock_source(intake, source_id)
        note = parse_notification(r4_parameters_bundle("event-notification", 1, []))
        handle_notification(intake, source_id, note, Payload())
        looking.start()
        try:
            wait_for(
                lambda: any(path.endswith("$status") for _m, path in ehr.requests),
                timeout_s=30,
                what="the watch reading $status",
            )
            looking.join(0.5)
            assert looking.is_alive()  # waiting for the source's lock
        finally:
            intake.commit()
    looking.join(30)
    assert errors == []
    assert {w.id: (w.owed, w.lost) for w in seen}["sub-1"] == (False, False)
    with session_factory() as session:
        assert catchup.owed_since(session, source_id) is None


def catchup_rows_deleted() -> Delete:
    return delete(SyncCursor).where(SyncCursor.resource_type == catchup.CATCH_UP_KEY)


def test_reactivation_needs_the_header_back() -> None:
    ehr = FakeEhr()
    source = build_source(
        SourceConfig(kind="fhir", base_url="https://ehr.example/fhir"),
        transport=httpx.MockTransport(ehr.handler),
    )
    assert isinstance(source, RestSource)
    client = EhrSubscriptions(source)
    created = client.create(PLAN.requests(TOKEN, [])[0])
    ehr.subscriptions[created.id]["status"] = "error"
    ehr.mask_headers = True
    with pytest.raises(PermanentError):
        client.reactivate(created.id, lambda token: token == TOKEN)
    ehr.mask_headers = False
    assert client.reactivate(created.id, lambda token: token == TOKEN).status == "active"
    assert client.read("nope").status is None


# -- against sekmet-fhir, a real Subscriptions Backport server ------------------------------


@pytest.mark.sekmet
def test_an_ehr_that_stopped_notifying_is_started_again_and_nothing_is_lost(
    engine: Engine, db_url: str, sekmet_factory: SekmetFactory
) -> None:
    """sekmet-fhir pushes Patient changes to a live askonce over HTTP (id-only, topic-based).
    askonce goes down; the change made meanwhile is not delivered and sekmet puts the
    Subscription in error, after which it sends nothing more. Back up, the scheduler's tick
    finds the error, starts the Subscription again and reads the missed Patient with a
    catch-up sync; the next change is pushed again."""
    server = sekmet_factory({"subscriptions": {"retries": 1}})
    runtime = build_runtime(Settings(database_url=db_url, secret_key=SECRET))
    factory = runtime.session_factory
    source_id = add_source(
        factory, "ehr-live", kind="fhir", base_url=server.base_url, config={"max_attempts": 2}
    )
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/intake/ehr-live"

    def stored() -> set[str]:
        with factory() as session:
            return {r.resource_id for r in records(session, source_id)}

    def ehr_status(sub_id: str) -> str:
        return str(server.read("Subscription", sub_id)["status"])

    def new_patient(family: str) -> str:
        body = {k: v for k, v in patient("x", family).items() if k not in ("id", "meta")}
        return str(server.create(body)["id"])

    with serve_in_thread(runtime.create_app(), port):
        done = subscribe(
            factory,
            "ehr-live",
            TOKEN,
            Plan(endpoint=endpoint, topics=(TOPIC,)),
        )
        sub_id = done.created[0].id
        wait_for(lambda: ehr_status(sub_id) == "active", timeout_s=30, what="the handshake")
        first = new_patient("Pushed")
        wait_for(lambda: first in stored(), timeout_s=30, what="the first push")
    missed = new_patient("Missed")  # askonce is down
    wait_for(
        lambda: ehr_status(sub_id) == "error", timeout_s=30, what="sekmet to stop the Subscription"
    )
    with serve_in_thread(runtime.create_app(), port):
        assert runtime.run_due() == [source_id]
        # The run may have been taken over by the catch-up the new handshake started.
        wait_for(lambda: missed in stored(), timeout_s=30, what="the missed Patient")

        def settled() -> bool:
            with factory() as session:
                return catchup.owed(session) == {}

        # The new handshake counts 2 events, of which 1 arrived: a gap too, whose own
        # catch-up (started by the intake) settles the debt it records.
        wait_for(settled, timeout_s=30, what="the catch-up debts to be paid")
        wait_for(lambda: ehr_status(sub_id) == "active", timeout_s=30, what="the new handshake")
        again = new_patient("PushedAgain")
        wait_for(lambda: again in stored(), timeout_s=30, what="the push after the restart")
        # What an operator sees.
        admin = TokenService(SECRET).issue("operator", ["askonce.admin"])
        listed = httpx.get(
            f"http://127.0.0.1:{port}/admin/sources",
            headers={"Authorization": f"Bearer {admin}"},
        ).json()
        watched = next(s for s in listed if s["name"] == "ehr-live")["ehr_subscriptions"]
        assert [(w["id"], w["what"]) for w in watched] == [(sub_id, TOPIC)]
        assert watched[0]["heard_at"] is not None
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        shown = re.findall(
            rf'askonce_push_subscription_status{{source="ehr-live",status="(\w+)",'
            rf'subscription="{sub_id}"}} 1.0',
            metrics,
        )
        assert shown in (["active"], ["requested"])
    assert unsubscribe(factory, "ehr-live")[0].id == sub_id
    assert server.client.get(f"/Subscription/{sub_id}").status_code in (404, 410)


@pytest.mark.sekmet
def test_subscriptions_askonce_chooses_push_patients_and_encounters(
    engine: Engine, db_url: str, sekmet_factory: SekmetFactory
) -> None:
    """Told nothing, subscribe reads sekmet-fhir's topics: Patients go by its
    ``patient-change`` topic (numbered, id-only), Encounters, which no topic of it covers
    whole, by a classic ``Encounter?`` Subscription that PUTs each one to
    /intake/NAME/Encounter/ID. A new Patient and its Encounter both arrive by push, and the
    Encounter is attached to the Patient's golden record."""
    server = sekmet_factory()
    runtime = build_runtime(Settings(database_url=db_url, secret_key=SECRET))
    factory = runtime.session_factory
    source_id = add_source(factory, "ehr-auto", kind="fhir", base_url=server.base_url)
    port = free_port()
    with serve_in_thread(runtime.create_app(), port):
        plan = Plan(endpoint=f"http://127.0.0.1:{port}/intake/ehr-auto")
        done = subscribe(factory, "ehr-auto", TOKEN, plan)
        assert done.choice is not None and done.choice.uncovered == ("Encounter",)
        assert sorted((m.what, m.content) for m in done.created) == [
            ("Encounter?", "full-resource"),
            (TOPIC, "id-only"),
        ]
        topic_id = next(m.id for m in done.created if m.what == TOPIC)
        wait_for(
            lambda: server.read("Subscription", topic_id)["status"] == "active",
            timeout_s=30,
            what="the handshake",
        )
        body = {k: v for k, v in patient("x", "Autochosen").items() if k not in ("id", "meta")}
        patient_id = str(server.create(body)["id"])
        visit = {k: v for k, v in encounter("x", patient_id).items() if k not in ("id", "meta")}
        encounter_id = str(server.create(visit)["id"])

        def arrived() -> bool:
            with factory() as session:
                stored = {(r.resource_type, r.resource_id) for r in records(session, source_id)}
            return {("Patient", patient_id), ("Encounter", encounter_id)} <= stored

        wait_for(arrived, timeout_s=30, what="the pushed Patient and Encounter")
        with factory() as session:
            golden = session.scalar(
                select(Link.golden_id)
                .join(SourceRecord, SourceRecord.id == Link.source_record_id)
                .where(SourceRecord.source_id == source_id, SourceRecord.resource_id == patient_id)
            )
            attached = session.scalar(
                select(EncounterRow.golden_id).where(EncounterRow.source_id == source_id)
            )
            assert golden is not None and attached == golden
            assert catchup.owed(session) == {}  # nothing was lost on the way
        # askonce's database is restored from a backup older than the last event: sekmet's
        # $status counts an event the intake never saw, and a catch-up is owed for it.
        with factory() as session:
            row = next(
                r
                for r in session.scalars(select(SyncCursor))
                if r.resource_type.startswith("$push:") and topic_id in (r.cursor or "")
            )
            row.cursor = json.dumps({**json.loads(row.cursor or "{}"), "last_event": 0})
            session.commit()
        context = TaskContext(engine=engine, session_factory=factory, subscription_check_s=0)
        seen = {w.id: w for w in watch(context, now=utcnow() + timedelta(seconds=1))}
        assert (seen[topic_id].status, seen[topic_id].lost) == ("active", True)
        assert not seen[next(m.id for m in done.created if m.id != topic_id)].lost
        with factory() as session:
            assert catchup.owed_since(session, source_id) is not None
    assert len(unsubscribe(factory, "ehr-auto")) == 2


@pytest.mark.sekmet
def test_the_subscribe_command(
    cli_db: str, monkeypatch: pytest.MonkeyPatch, sekmet_factory: SekmetFactory
) -> None:
    server = sekmet_factory()
    runner = CliRunner()
    runner.invoke(app, ["sources", "add", "ehr", "--kind", "fhir", "--url", server.base_url])
    no_endpoint = runner.invoke(app, ["sources", "subscribe", "ehr", "--token", TOKEN])
    assert no_endpoint.exit_code == 2 and "--endpoint" in no_endpoint.output
    monkeypatch.setenv("ASKONCE_PUBLIC_BASE_URL", "http://127.0.0.1:9")
    get_settings.cache_clear()
    bad = runner.invoke(
        app, ["sources", "subscribe", "ehr", "--token", TOKEN, "--criteria", "Patient"]
    )
    assert bad.exit_code == 2 and "Type?params" in bad.output
    made = runner.invoke(app, ["sources", "subscribe", "ehr", "--token", TOKEN])
    assert made.exit_code == 0, made.output
    # sekmet's Patient topic fires on every change; its Encounter topics on one status
    # each, so Encounters take a classic Subscription.
    assert "2 subscription(s) created" in made.output
    assert f"Patient: topic {TOPIC}" in made.output
    assert "Encounter: no topic the EHR offers pushes every change" in made.output
    # The Encounters' classic Subscription cannot show a lost notification: the source
    # has no schedule to read what it misses, and the command says so.
    assert "do not number their events" in made.output
    assert "askonce sources update ehr --schedule" in made.output
    assert "http://127.0.0.1:9/intake/ehr" in made.output
    status = runner.invoke(app, ["sources", "status", "ehr"])
    assert "subscriptions on the EHR" in status.output and "Encounter?" in status.output
    assert TOKEN not in status.output
    removed = runner.invoke(app, ["sources", "unsubscribe", "ehr"])
    assert removed.exit_code == 0 and "2 subscription(s) deleted" in removed.output
