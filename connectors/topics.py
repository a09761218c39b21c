"""The SubscriptionTopics an EHR offers, read so that ``askonce sources subscribe`` can pick
the ones that push every change of the types a source syncs.

A topic-based Subscription (the Subscriptions Backport IG) numbers its events, so a lost
notification shows as a gap; a classic ``Patient?`` one does not. But a topic is only a
replacement for ``Patient?`` if it fires on *every* create and update of a Patient: the
Backport's own examples (``encounter-start``, ``encounter-complete``) fire on one status
change, and a sync fed by them alone would miss every other change.

A server lists its topics' canonical URLs in its CapabilityStatement; what each one
triggers on is in its definition:

* an R4B server has a ``SubscriptionTopic`` resource
  (https://hl7.org/fhir/R4B/subscriptiontopic.html);
* an R4 server keeps a topic as a ``Basic`` with ``code`` ``SubscriptionTopic`` and the
  R4B or R5 elements as cross-version extensions
  (``http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.url`` and so
  on, as the Backport IG's R4 examples and its reference servers do).

:func:`read_topics` reads both through the source's HTTP client; :func:`choose_topics`
picks, for each type, a topic whose ``resourceTrigger`` for it has no query or FHIRPath
criteria and allows both ``create`` and ``update``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.errors import ConnectorError
from connectors.paginate import BundleNextLinkPaginator, split_bundle
from connectors.source import RestSource

logger = logging.getLogger(__name__)

#: The R4B and R5 SubscriptionTopic elements as R4 cross-version extensions.
_CROSS_VERSION = re.compile(
    r"^http://hl7\.org/fhir/(?:4\.3|5\.0)/StructureDefinition/extension-SubscriptionTopic\.(\w+)$"
)
#: The ``Basic.code`` of a topic kept as a Basic.
TOPIC_CODE = "SubscriptionTopic"
#: The interactions a sync's Subscription must be told of (a deletion is read by the sync).
EVERY_CHANGE = frozenset({"create", "update"})
#: FHIRPath criteria that select every change.
_ALWAYS = frozenset({"", "true"})
#: Topics read per page, and the pages read at most.
TOPICS_PAGE_SIZE = 100
MAX_TOPIC_PAGES = 20


@dataclass(frozen=True)
class TopicTrigger:
    """One ``resourceTrigger`` of a topic."""

    resource_type: str
    #: ``create``, ``update``, ``delete``; empty when the topic lists none (all of them).
    interactions: frozenset[str]
    #: Query or FHIRPath criteria select some of the type's changes only.
    narrowed: bool

    @property
    def every_change(self) -> bool:
        return not self.narrowed and (not self.interactions or self.interactions >= EVERY_CHANGE)


@dataclass(frozen=True)
class Topic:
    """A SubscriptionTopic, as much of it as choosing one needs."""

    url: str
    title: str
    #: ``active``, ``draft``, ``retired``; None when the server does not say.
    status: str | None
    triggers: tuple[TopicTrigger, ...]

    def covers(self, resource_type: str) -> bool:
        """Whether every create and update of ``resource_type`` makes a notification."""
        return self.status in (None, "active") and any(
            t.resource_type == resource_type and t.every_change for t in self.triggers
        )


def _type_name(value: Any) -> str:
    """``Patient`` from ``Patient`` or ``http://hl7.org/fhir/StructureDefinition/Patient``."""
    return str(value or "").rstrip("/").rsplit("/", 1)[-1]


def _value(extension: dict[str, Any]) -> Any:
    return next((v for k, v in extension.items() if k.startswith("value")), None)


def _criteria(value: Any) -> bool:
    """Whether a ``queryCriteria`` narrows the changes (a ``previous`` or ``current`` search)."""
    if not isinstance(value, dict):
        return False
    return any(isinstance(value.get(k), str) and value[k].strip() for k in ("previous", "current"))


def _trigger(trigger: dict[str, Any]) -> TopicTrigger | None:
    resource_type = _type_name(trigger.get("resource"))
    if not resource_type:
        return None
    interactions = trigger.get("supportedInteraction")
    fhirpath = trigger.get("fhirPathCriteria")
    return TopicTrigger(
        resource_type,
        frozenset(str(i) for i in interactions if isinstance(i, str))
        if isinstance(interactions, list)
        else frozenset(),
        _criteria(trigger.get("queryCriteria"))
        or (isinstance(fhirpath, str) and fhirpath.strip() not in _ALWAYS),
    )


def _nested(extensions: Any) -> dict[str, Any]:
    """A complex extension's parts as the element they stand for (``supportedInteraction``
    repeats; ``queryCriteria`` nests)."""
    element: dict[str, Any] = {}
    for part in extensions if isinstance(extensions, list) else []:
        if not isinstance(part, dict) or not isinstance(part.get("url"), str):
            continue
        name = part["url"]
        value = _nested(part["extension"]) if "extension" in part else _value(part)
        if name == "supportedInteraction":
            element.setdefault(name, []).append(value)
        else:
            element[name] = value
    return element


def basic_as_topic(basic: dict[str, Any]) -> dict[str, Any] | None:
    """An R4 ``Basic`` topic as the ``SubscriptionTopic`` it stands for; None when the
    Basic is not a topic."""
    codings = (
        (basic.get("code") or {}).get("coding") if isinstance(basic.get("code"), dict) else None
    )
    if not any(
        isinstance(c, dict) and c.get("code") == TOPIC_CODE
        for c in (codings if isinstance(codings, list) else [])
    ):
        return None
    topic: dict[str, Any] = {"resourceType": "SubscriptionTopic", "resourceTrigger": []}
    for extension in [*(basic.get("extension") or []), *(basic.get("modifierExtension") or [])]:
        if not isinstance(extension, dict):
            continue
        match = _CROSS_VERSION.match(str(extension.get("url", "")))
        if match is None:
            continue
        element = match.group(1)
        if element == "resourceTrigger":
            topic["resourceTrigger"].append(_nested(extension.get("extension")))
        elif element in ("url", "title", "status"):
            topic[element] = _value(extension)
    return topic


def parse_topic(resource: dict[str, Any]) -> Topic | None:
    """A ``SubscriptionTopic`` (R4B) or a ``Basic`` topic (R4); None for anything else."""
    if resource.get("resourceType") == "Basic":
        converted = basic_as_topic(resource)
        if converted is None:
            return None
        resource = converted
    if resource.get("resourceType") != "SubscriptionTopic":
        return None
    url = resource.get("url")
    if not isinstance(url, str) or not url:
        return None
    triggers = resource.get("resourceTrigger")
    parsed = [
        _trigger(t) for t in (triggers if isinstance(triggers, list) else []) if isinstance(t, dict)
    ]
    status = resource.get("status")
    title = resource.get("title")
    return Topic(
        url,
        title if isinstance(title, str) else url,
        status if isinstance(status, str) else None,
        tuple(t for t in parsed if t is not None),
    )


def read_topics(source: RestSource) -> list[Topic]:
    """The topic definitions the server holds: its ``SubscriptionTopic`` resources and its
    ``Basic`` topics, each searched if the CapabilityStatement offers the type. A search the
    server refuses counts as none (raised only when every search failed)."""
    capabilities = source.capabilities()
    searches = [
        (rtype, params)
        for rtype, params in (
            ("SubscriptionTopic", []),
            ("Basic", [("code", TOPIC_CODE)]),
        )
        if capabilities.supports(rtype)
    ]
    found: dict[str, Topic] = {}
    failed: ConnectorError | None = None
    for rtype, params in searches:
        try:
            for bundle in BundleNextLinkPaginator(
                source.http,
                rtype,
                [*params, ("_count", str(TOPICS_PAGE_SIZE))],
                max_pages=MAX_TOPIC_PAGES,
            ):
                for resource in split_bundle(bundle).resources:
                    topic = parse_topic(resource)
                    if topic is not None:
                        found.setdefault(topic.url, topic)
        except ConnectorError as exc:
            logger.warning(
                "connector topic search failed",
                extra={"resource_type": rtype, "error": type(exc).__name__},
            )
            failed = exc
    if failed is not None and not found and len(searches) == 1:
        raise failed
    return sorted(found.values(), key=lambda t: t.url)


@dataclass(frozen=True)
class TopicChoice:
    """Which topic pushes each type's changes, and the types no topic covers."""

    #: Resource type -> topic canonical URL.
    topics: dict[str, str]
    uncovered: tuple[str, ...]

    @property
    def urls(self) -> list[str]:
        """Each chosen topic once, in the order of the types."""
        return list(dict.fromkeys(self.topics.values()))


def choose_topics(
    topics: Iterable[Topic], resource_types: Sequence[str], offered: Iterable[str] = ()
) -> TopicChoice:
    """For each of ``resource_types``, a topic that covers it (:meth:`Topic.covers`),
    among ``offered`` when the server lists any. Fewer Subscriptions are better: a topic
    covering more of the types still to place wins, then the first URL."""
    listed = frozenset(offered)
    usable = [t for t in topics if not listed or t.url in listed]
    chosen: dict[str, str] = {}
    uncovered: list[str] = []
    for rtype in resource_types:
        if rtype in chosen:
            continue
        covering = [t for t in usable if t.covers(rtype)]
        if not covering:
            uncovered.append(rtype)
            continue
        rest = [r for r in resource_types if r not in chosen]
        best = min(covering, key=lambda t: (-sum(t.covers(r) for r in rest), t.url))
        for other in rest:
            if best.covers(other):
                chosen[other] = best.url
    return TopicChoice(chosen, tuple(uncovered))
