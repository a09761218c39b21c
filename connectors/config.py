"""Plain data shared by every source: configuration, pages and capabilities.

A source is described by a :class:`SourceConfig` (what to connect to and how) and
produces :class:`Page` objects: raw FHIR JSON plus the opaque cursor to store
after it. See the README section "Configuring a source" for every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: FHIR search ``_count`` per request.
DEFAULT_PAGE_SIZE = 100
#: Re-read this many seconds before the newest ``meta.lastUpdated`` seen, so that a
#: resource committed late by the server (clock skew, long transactions) is not missed.
DEFAULT_OVERLAP_S = 60.0
#: Client-side rate limit per source.
DEFAULT_REQUESTS_PER_S = 10.0
#: Total attempts for one request (first try included).
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_TIMEOUT_S = 30.0
#: Exponential backoff: base * 2**(attempt-1), capped, with full jitter.
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_BACKOFF_MAX_S = 30.0
#: A server's Retry-After is honoured up to this long; beyond it the request fails as transient.
DEFAULT_MAX_RETRY_AFTER_S = 300.0
#: Bulk Data status polling when the server sends no Retry-After, and the overall bound.
DEFAULT_POLL_INTERVAL_S = 2.0
DEFAULT_MAX_POLL_S = 3600.0

SourceKind = Literal["fhir", "history", "bulk", "ndjson", "hl7v2", "portal"]
VendorProfile = Literal["standard", "patient-scoped"]
BulkLevel = Literal["system", "patient", "group"]
SOURCE_KINDS: tuple[str, ...] = ("fhir", "history", "bulk", "ndjson", "hl7v2", "portal")
#: Kinds nothing is pulled from: their data is pushed to askonce (``hl7v2``: ADT over MLLP,
#: ``askonce mllp``; ``portal``: a patient portal's completed forms, ``POST
#: /fhir/QuestionnaireResponse``), so they have no connector and no schedule.
HL7V2_KIND = "hl7v2"
PORTAL_KIND = "portal"
PUSH_ONLY_KINDS: tuple[str, ...] = (HL7V2_KIND, PORTAL_KIND)
#: Kinds read from a FHIR server (a :class:`connectors.RestSource`), which can hold
#: Subscriptions.
SERVER_KINDS: tuple[str, ...] = ("fhir", "history", "bulk")


def push_arrival(kind: str) -> str:
    """Where the data of a push-only source of ``kind`` arrives (for the refusals to pull)."""
    if kind == PORTAL_KIND:
        return "its forms arrive at POST /fhir/QuestionnaireResponse"
    return "its messages arrive on its port, served by askonce mllp"


VENDOR_PROFILES: tuple[str, ...] = ("standard", "patient-scoped")
BULK_LEVELS: tuple[str, ...] = ("system", "patient", "group")
DEFAULT_RESOURCE_TYPES: tuple[str, ...] = ("Patient", "Encounter")


@dataclass
class SourceConfig:
    """Where a source lives and how to talk to it.

    ``base_url`` is the FHIR base URL (``https://ehr.example/fhir/R4``) or, for
    ``kind="ndjson"``, a folder of ``<Type>.ndjson`` files. ``auth`` selects an
    :mod:`connectors.auth` class by its ``"kind"``; ``options`` holds the keys read
    by :class:`SourceOptions`.
    """

    kind: SourceKind
    base_url: str
    auth: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})
    resource_types: list[str] = field(default_factory=lambda: list(DEFAULT_RESOURCE_TYPES))
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceOptions:
    """``SourceConfig.options`` with defaults applied and types checked."""

    page_size: int = DEFAULT_PAGE_SIZE
    overlap_s: float = DEFAULT_OVERLAP_S
    requests_per_s: float | None = DEFAULT_REQUESTS_PER_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_s: float = DEFAULT_TIMEOUT_S
    backoff_base_s: float = DEFAULT_BACKOFF_BASE_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    max_retry_after_s: float = DEFAULT_MAX_RETRY_AFTER_S
    vendor_profile: VendorProfile = "standard"
    sort: bool = True
    bulk_level: BulkLevel = "system"
    group_id: str | None = None
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    max_poll_s: float = DEFAULT_MAX_POLL_S
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> SourceOptions:
        """Build from a config dict; unknown keys or bad values raise ``ValueError``."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"unknown source option(s): {', '.join(unknown)}")
        for key, value in options.items():
            _check_type(key, value)
        whole = {key: int(options[key]) for key in _INT_OPTIONS if key in options}
        opts = cls(**{**options, **whole})
        if opts.page_size < 1 or opts.max_attempts < 1:
            raise ValueError("page_size and max_attempts must be at least 1")
        if opts.overlap_s < 0 or opts.timeout_s <= 0:
            raise ValueError("overlap_s must be >= 0 and timeout_s > 0")
        if opts.requests_per_s is not None and opts.requests_per_s <= 0:
            raise ValueError("requests_per_s must be positive (or null for no limit)")
        if opts.vendor_profile not in VENDOR_PROFILES:
            raise ValueError(f"vendor_profile must be one of {VENDOR_PROFILES}")
        if opts.bulk_level not in BULK_LEVELS:
            raise ValueError(f"bulk_level must be one of {BULK_LEVELS}")
        if opts.bulk_level == "group" and not opts.group_id:
            raise ValueError("bulk_level 'group' needs group_id")
        return opts


_INT_OPTIONS = frozenset({"page_size", "max_attempts"})
_NUMBER_OPTIONS = frozenset(
    {
        "overlap_s",
        "timeout_s",
        "backoff_base_s",
        "backoff_max_s",
        "max_retry_after_s",
        "poll_interval_s",
        "max_poll_s",
    }
)


def _check_type(key: str, value: Any) -> None:
    """Options come from JSON or the command line: refuse a value of the wrong type."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in _INT_OPTIONS and not (is_number and float(value).is_integer()):
        raise ValueError(f"source option {key} must be a whole number")
    if key in _NUMBER_OPTIONS and not is_number:
        raise ValueError(f"source option {key} must be a number")
    if key == "requests_per_s" and value is not None and not is_number:
        raise ValueError("source option requests_per_s must be a number or null")
    if key == "sort" and not isinstance(value, bool):
        raise ValueError("source option sort must be true or false")
    if key == "headers" and not (
        isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    ):
        raise ValueError("source option headers must be an object of strings")


@dataclass
class Page:
    """One page of a stream.

    ``resources`` are raw FHIR JSON objects, passed through unvalidated (a bad
    resource is the caller's to quarantine). ``cursor`` is opaque: store it in the
    same transaction as the page's data and pass it back to ``stream`` next time.
    ``deleted`` lists ids of resources of ``resource_type`` that the server reports
    deleted; ``replaced`` maps ids of Patients the source merged into another Patient
    (an HL7 v2 A40's prior patient) to the surviving one's id (a FHIR Patient that says
    so itself, with a ``replaced-by`` link, is found by the pipeline). ``outcomes``
    carries OperationOutcomes the server reported alongside the data (Bulk Data
    ``error[]`` files, search ``outcome`` entries).

    ``lines`` (pages of :meth:`connectors.source.Source.stream_lines` only) are NDJSON
    lines the connector left undecoded, in file order, each with the file's name and
    its line number: their consumer decodes them
    (:func:`connectors.ndjson.parse_line`), or recognises an unchanged one by its bytes
    and does not.
    """

    resource_type: str
    resources: list[dict[str, Any]]
    cursor: str | None
    deleted: list[str] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    lines: list[RawLine] = field(default_factory=list)
    replaced: dict[str, str] = field(default_factory=dict)


#: One undecoded NDJSON line of a :class:`Page`: its bytes, its file's name, its number.
RawLine = tuple[bytes, str, int]


@dataclass(frozen=True)
class ResourceCapability:
    """What a server declares for one resource type in its CapabilityStatement."""

    search_params: frozenset[str]
    interactions: frozenset[str]
    operations: frozenset[str]


#: The Subscriptions Backport's extension listing a server's SubscriptionTopic canonicals.
TOPIC_CANONICAL_EXTENSION = "/capabilitystatement-subscriptiontopic-canonical"


@dataclass(frozen=True)
class Capabilities:
    """The parts of a `CapabilityStatement <https://hl7.org/fhir/R4/capabilitystatement.html>`_
    that a connector relies on."""

    fhir_version: str | None
    software: str | None
    resources: dict[str, ResourceCapability]
    system_operations: frozenset[str]
    system_interactions: frozenset[str]
    #: SubscriptionTopic canonicals the server offers (the Subscriptions Backport's
    #: ``capabilitystatement-subscriptiontopic-canonical`` extension on ``Subscription``).
    subscription_topics: frozenset[str] = frozenset()

    @property
    def resource_types(self) -> list[str]:
        return sorted(self.resources)

    def supports(self, resource_type: str) -> bool:
        return resource_type in self.resources

    def supports_search_param(self, resource_type: str, name: str) -> bool:
        resource = self.resources.get(resource_type)
        return resource is not None and name in resource.search_params

    def supports_operation(self, name: str, resource_type: str | None = None) -> bool:
        """``name`` without ``$``; system level when ``resource_type`` is None."""
        if resource_type is None:
            return name in self.system_operations
        resource = self.resources.get(resource_type)
        return resource is not None and name in resource.operations

    @classmethod
    def from_capability_statement(cls, statement: dict[str, Any]) -> Capabilities:
        resources: dict[str, ResourceCapability] = {}
        topics: set[str] = set()
        system_ops: set[str] = set()
        system_interactions: set[str] = set()
        for rest in statement.get("rest") or []:
            if not isinstance(rest, dict) or rest.get("mode", "server") != "server":
                continue
            system_ops.update(_names(rest.get("operation"), "name"))
            system_interactions.update(_names(rest.get("interaction"), "code"))
            for resource in rest.get("resource") or []:
                if not isinstance(resource, dict) or not isinstance(resource.get("type"), str):
                    continue
                if resource["type"] == "Subscription":
                    topics.update(
                        str(e.get("valueCanonical"))
                        for e in resource.get("extension") or []
                        if isinstance(e, dict)
                        and str(e.get("url", "")).endswith(TOPIC_CANONICAL_EXTENSION)
                        and e.get("valueCanonical")
                    )
                resources[resource["type"]] = ResourceCapability(
                    search_params=frozenset(_names(resource.get("searchParam"), "name")),
                    interactions=frozenset(_names(resource.get("interaction"), "code")),
                    operations=frozenset(_names(resource.get("operation"), "name")),
                )
        software = statement.get("software")
        return cls(
            fhir_version=statement.get("fhirVersion"),
            software=software.get("name") if isinstance(software, dict) else None,
            resources=resources,
            system_operations=frozenset(system_ops),
            system_interactions=frozenset(system_interactions),
            subscription_topics=frozenset(topics),
        )


def _names(items: Any, key: str) -> list[str]:
    if not isinstance(items, list):
        return []
    return [
        str(item[key]).lstrip("$")
        for item in items
        if isinstance(item, dict) and isinstance(item.get(key), str)
    ]


def as_object(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (for reading untrusted JSON)."""
    return value if isinstance(value, dict) else {}
