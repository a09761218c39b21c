"""The topics askonce offers its consumers (:data:`sync.delivery.TOPICS`), as the R4
``Basic`` resources the Subscriptions Backport IG keeps topics in: ``code``
``http://hl7.org/fhir/fhir-types|SubscriptionTopic``, and the R5 ``SubscriptionTopic``
elements as cross-version extensions (``url``, ``title``, ``status``, ``description``,
``resourceTrigger``, ``canFilterBy``). The CapabilityStatement lists their canonical URLs;
these say what each one fires on and what it can be filtered by, so that a client can
choose one without reading our documentation (:mod:`connectors.topics` reads them back).
"""

from __future__ import annotations

from typing import Any

from sync.delivery import ENCOUNTER_TOPIC, PATIENT_TOPIC, TOPICS, Topic

#: Where the R5 SubscriptionTopic elements live on an R4 Basic.
CROSS_VERSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic"
FHIR_TYPES = "http://hl7.org/fhir/fhir-types"
TOPIC_CODE = "SubscriptionTopic"
#: ``GET /fhir/Basic``'s search parameters.
TOPIC_SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "code": ("token", "SubscriptionTopic: the topics a consumer can subscribe to"),
    "_id": ("token", "A topic's id (the last part of its canonical URL)"),
}
#: Each topic's title and what it fires on.
_WORDS: dict[str, tuple[str, str]] = {
    PATIENT_TOPIC.url: (
        "Golden Patient record changed",
        "A golden Patient record was created, changed, deleted, merged into another or unmerged.",
    ),
    ENCOUNTER_TOPIC.url: (
        "Encounter changed",
        "An Encounter of a golden Patient record was created, changed or deleted.",
    ),
}
#: A topic fires on every change of its type: created, updated, deleted.
INTERACTIONS = ("create", "update", "delete")


def topic_id(topic: Topic) -> str:
    """The Basic's id: ``patient-change`` for ``.../SubscriptionTopic/patient-change``."""
    return topic.url.rstrip("/").rsplit("/", 1)[-1]


def _ext(name: str, **value: Any) -> dict[str, Any]:
    return {"url": f"{CROSS_VERSION}.{name}", **value}


def render_topic(topic: Topic) -> dict[str, Any]:
    """One topic as an R4 Basic."""
    title, description = _WORDS.get(topic.url, (topic_id(topic), topic_id(topic)))
    trigger = [
        {"url": "description", "valueMarkdown": description},
        {
            "url": "resource",
            "valueUri": f"http://hl7.org/fhir/StructureDefinition/{topic.resource_type}",
        },
        *[{"url": "supportedInteraction", "valueCode": i} for i in INTERACTIONS],
    ]
    return {
        "resourceType": "Basic",
        "id": topic_id(topic),
        "modifierExtension": [_ext("status", valueCode="active")],
        "extension": [
            _ext("url", valueUri=topic.url),
            _ext("title", valueString=title),
            _ext("description", valueMarkdown=description),
            _ext("resourceTrigger", extension=trigger),
            _ext(
                "canFilterBy",
                extension=[
                    {"url": "resource", "valueUri": topic.resource_type},
                    {"url": "filterParameter", "valueString": topic.filter_param},
                ],
            ),
        ],
        "code": {"coding": [{"system": FHIR_TYPES, "code": TOPIC_CODE}]},
    }


def read_topic(basic_id: str) -> dict[str, Any] | None:
    """The topic whose Basic id is ``basic_id``; None when there is none."""
    topic = next((t for t in TOPICS.values() if topic_id(t) == basic_id), None)
    return render_topic(topic) if topic is not None else None


def search_topics(codes: list[str], ids: list[str]) -> list[dict[str, Any]]:
    """The topics a ``Basic`` search finds: every ``code`` given (``code`` or
    ``system|code``, comma-separated alternatives) must name SubscriptionTopic, and
    ``_id``, if given, must list the topic. A Basic of any other kind does not exist here."""
    for token in codes:
        alternatives = token.split(",")
        if not any(_is_topic_code(a) for a in alternatives):
            return []
    wanted = {i for value in ids for i in value.split(",")}
    return [
        render_topic(t)
        for t in sorted(TOPICS.values(), key=lambda t: t.url)
        if not wanted or topic_id(t) in wanted
    ]


def _is_topic_code(token: str) -> bool:
    """``code``, or ``system|code`` with our system (``|code`` asks for no system)."""
    system, bar, code = token.rpartition("|")
    if not bar:
        return token == TOPIC_CODE
    return code == TOPIC_CODE and system == FHIR_TYPES
