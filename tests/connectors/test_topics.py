"""Reading an EHR's SubscriptionTopics (connectors.topics): the R4B resource and the R4
``Basic`` with cross-version extensions read the same, and a topic is chosen for a type
only if it pushes every create and update of it. A real server's topics (sekmet-fhir's
Basic ones) are read at the end."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connectors import PermanentError, RestSource, SourceConfig, build_source
from connectors.topics import (
    Topic,
    TopicTrigger,
    basic_as_topic,
    choose_topics,
    parse_topic,
    read_topics,
)
from tests.connectors.helpers import (
    BASE,
    FAST_OPTIONS,
    R4B_TOPIC_EXTENSION,
    R5_TOPIC_EXTENSION,
    basic_topic,
    outcome,
    searchset,
)
from tests.sekmet_server import SekmetServer


def test_a_topic_reads_the_same_as_a_basic_and_as_a_subscription_topic() -> None:
    r4b = {
        "resourceType": "SubscriptionTopic",
        "url": "http://ehr.example/topic/patient",
        "title": "Patient changed",
        "status": "active",
        "resourceTrigger": [
            {
                "resource": "http://hl7.org/fhir/StructureDefinition/Patient",
                "supportedInteraction": ["create", "update", "delete"],
            }
        ],
    }
    expected = Topic(
        "http://ehr.example/topic/patient",
        "Patient changed",
        "active",
        (TopicTrigger("Patient", frozenset({"create", "update", "delete"}), False),),
    )
    assert parse_topic(r4b) == expected
    for prefix in (R5_TOPIC_EXTENSION, R4B_TOPIC_EXTENSION):
        basic = basic_topic(
            "http://ehr.example/topic/patient",
            "Patient",
            prefix=prefix,
            interactions=("create", "update", "delete"),
        )
        basic["extension"][1]["valueString"] = "Patient changed"
        assert parse_topic(basic) == expected
    # A Basic of another kind, a topic without a URL and other resources are not topics.
    not_a_topic = basic_topic("http://x/t", "Patient")
    not_a_topic["code"] = {"coding": [{"code": "referral"}]}
    assert basic_as_topic(not_a_topic) is None and parse_topic(not_a_topic) is None
    assert parse_topic({**r4b, "url": ""}) is None
    assert parse_topic({"resourceType": "Patient", "id": "p"}) is None
    # Untrusted shapes read as nothing rather than failing.
    odd = {"resourceType": "SubscriptionTopic", "url": "u", "resourceTrigger": [{}, "x", None]}
    assert parse_topic(odd) == Topic("u", "u", None, ())


@pytest.mark.parametrize(
    ("shape", "covers"),
    [
        ({}, True),
        ({"interactions": ()}, True),  # no interaction listed: every one
        ({"fhirpath": "true"}, True),
        ({"interactions": ("create",)}, False),
        ({"fhirpath": "%current.status = 'finished'"}, False),
        ({"current": "status=finished"}, False),
        ({"status": "retired"}, False),
        ({"status": "draft"}, False),
        ({"status": None}, True),
    ],
)
def test_a_topic_covers_a_type_only_if_every_change_is_pushed(
    shape: dict[str, Any], covers: bool
) -> None:
    topic = parse_topic(basic_topic("http://ehr.example/topic/t", "Encounter", **shape))
    assert topic is not None
    assert topic.covers("Encounter") is covers
    assert not topic.covers("Patient")


def test_choosing_topics_for_a_sources_types() -> None:
    patient = parse_topic(basic_topic("http://t/patient", "Patient"))
    started = parse_topic(
        basic_topic("http://t/encounter-start", "Encounter", fhirpath="%current.status = 'x'")
    )
    both = parse_topic(basic_topic("http://t/both", "Patient"))
    assert patient and started and both
    both = Topic(both.url, both.title, both.status, (*both.triggers, *_triggers("Encounter")))
    # One topic covering both types wins over two Subscriptions.
    choice = choose_topics([patient, started, both], ["Patient", "Encounter"])
    assert choice.topics == {"Patient": "http://t/both", "Encounter": "http://t/both"}
    assert choice.uncovered == () and choice.urls == ["http://t/both"]
    # A topic the CapabilityStatement does not list is not chosen.
    choice = choose_topics([patient, started, both], ["Patient", "Encounter"], ["http://t/patient"])
    assert choice.topics == {"Patient": "http://t/patient"}
    assert choice.uncovered == ("Encounter",)
    # Ties go to the first URL.
    other = parse_topic(basic_topic("http://t/another-patient", "Patient"))
    assert other is not None
    assert choose_topics([patient, other], ["Patient"]).urls == ["http://t/another-patient"]
    assert choose_topics([], ["Patient"]).uncovered == ("Patient",)


def _triggers(resource_type: str) -> tuple[TopicTrigger, ...]:
    return (TopicTrigger(resource_type, frozenset(), False),)


def _source(handler: Any, resources: list[str]) -> RestSource:
    statement = {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [{"mode": "server", "resource": [{"type": t} for t in resources]}],
    }

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(200, json=statement)
        result: httpx.Response = handler(request)
        return result

    source = build_source(
        SourceConfig(kind="fhir", base_url=BASE, options={**FAST_OPTIONS, "max_attempts": 1}),
        transport=httpx.MockTransport(answer),
        sleep=lambda _s: None,
    )
    assert isinstance(source, RestSource)
    return source


def test_reading_the_topics_of_a_server() -> None:
    asked: list[str] = []
    r4b_topic = {
        "resourceType": "SubscriptionTopic",
        "url": "http://t/r4b",
        "resourceTrigger": [{"resource": "Patient"}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.url.path.rsplit('/', 1)[-1]}?{request.url.query.decode()}")
        if request.url.path.endswith("/SubscriptionTopic"):
            return httpx.Response(200, json=searchset([r4b_topic]))
        page = [basic_topic("http://t/basic", "Patient"), {"resourceType": "Basic", "id": "x"}]
        return httpx.Response(200, json=searchset(page))

    with _source(handler, ["Patient", "Basic", "SubscriptionTopic", "Subscription"]) as source:
        assert isinstance(source, RestSource)
        assert [t.url for t in read_topics(source)] == ["http://t/basic", "http://t/r4b"]
    assert asked == ["SubscriptionTopic?_count=100", "Basic?code=SubscriptionTopic&_count=100"]
    # A server offering neither type is not asked.
    with _source(handler, ["Patient"]) as source:
        assert isinstance(source, RestSource)
        assert read_topics(source) == []
    # One search refused while the other answers: what it found. Its only search refused:
    # the error, so that the caller can say the definitions were not read.

    def refusing(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Basic"):
            return httpx.Response(403, json=outcome("forbidden", "forbidden"))
        return httpx.Response(200, json=searchset([r4b_topic]))

    with _source(refusing, ["Basic", "SubscriptionTopic"]) as source:
        assert isinstance(source, RestSource)
        assert [t.url for t in read_topics(source)] == ["http://t/r4b"]
    with _source(refusing, ["Basic"]) as source, pytest.raises(PermanentError):
        assert isinstance(source, RestSource)
        read_topics(source)


@pytest.mark.sekmet
def test_a_real_servers_topics(sekmet_server: SekmetServer) -> None:
    """sekmet-fhir keeps its topics as R4 Basics: a Patient topic that fires on every
    change, and Encounter topics that fire on one status each."""
    source = build_source(SourceConfig(kind="fhir", base_url=sekmet_server.base_url))
    assert isinstance(source, RestSource)
    with source:
        topics = read_topics(source)
        offered = source.capabilities().subscription_topics
    assert {t.url for t in topics} == set(offered) and len(topics) >= 2
    choice = choose_topics(topics, ["Patient", "Encounter"], offered)
    assert choice.topics == {"Patient": "http://sekmet.dev/fhir/SubscriptionTopic/patient-change"}
    assert choice.uncovered == ("Encounter",)
    assert any(t.triggers[0].resource_type == "Encounter" for t in topics)
