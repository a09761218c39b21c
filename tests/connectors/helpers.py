"""Building blocks for connector tests: fake FHIR servers behind ``httpx.MockTransport``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from connectors import Source, SourceConfig, build_source
from connectors.config import SourceKind

BASE = "https://ehr.example/fhir"
JsonDict = dict[str, Any]
#: Options for tests: no rate limit, tiny backoff, few attempts.
FAST_OPTIONS: JsonDict = {
    "requests_per_s": None,
    "backoff_base_s": 0.01,
    "max_attempts": 3,
    "page_size": 2,
}


def patient(rid: str, version: str = "1", stamp: str = "2026-01-01T00:00:00Z") -> JsonDict:
    return {
        "resourceType": "Patient",
        "id": rid,
        "meta": {"versionId": version, "lastUpdated": stamp},
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "birthDate": "1970-01-01",
    }


def searchset(resources: list[JsonDict], next_url: str | None = None) -> JsonDict:
    links = [{"relation": "self", "url": f"{BASE}/Patient"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def outcome(text: str, code: str = "not-supported") -> JsonDict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


class Recorder:
    """A MockTransport handler that records requests and answers from a function."""

    def __init__(self, answer: Callable[[httpx.Request, int], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request, len(self.requests))

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def make_source(
    handler: Recorder,
    *,
    kind: SourceKind = "fhir",
    options: JsonDict | None = None,
    auth: JsonDict | None = None,
    sleeps: list[float] | None = None,
) -> Source:
    """A source on ``handler``; waits are recorded in ``sleeps`` instead of slept."""
    recorded = sleeps if sleeps is not None else []
    config = SourceConfig(
        kind=kind,
        base_url=BASE,
        auth=auth or {"kind": "none"},
        options={**FAST_OPTIONS, **(options or {})},
    )
    return build_source(config, transport=handler.transport, sleep=recorded.append)


R5_TOPIC_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic"
R4B_TOPIC_EXTENSION = "http://hl7.org/fhir/4.3/StructureDefinition/extension-SubscriptionTopic"
FHIR_TYPES = "http://hl7.org/fhir/fhir-types"


def basic_topic(
    url: str,
    resource: str,
    *,
    prefix: str = R5_TOPIC_EXTENSION,
    interactions: tuple[str, ...] = ("create", "update"),
    fhirpath: str | None = None,
    current: str | None = None,
    status: str | None = "active",
) -> dict[str, Any]:
    """A topic kept as an R4 Basic, as the Backport IG's R4 examples write one."""
    trigger: list[dict[str, Any]] = [
        {"url": "description", "valueMarkdown": "a change"},
        {"url": "resource", "valueUri": f"http://hl7.org/fhir/StructureDefinition/{resource}"},
        *[{"url": "supportedInteraction", "valueCode": i} for i in interactions],
    ]
    if fhirpath is not None:
        trigger.append({"url": "fhirPathCriteria", "valueString": fhirpath})
    if current is not None:
        trigger.append(
            {
                "url": "queryCriteria",
                "extension": [
                    {"url": "current", "valueString": current},
                    {"url": "requireBoth", "valueBoolean": False},
                ],
            }
        )
    basic: dict[str, Any] = {
        "resourceType": "Basic",
        "id": url.rsplit("/", 1)[-1],
        "code": {"coding": [{"system": FHIR_TYPES, "code": "SubscriptionTopic"}]},
        "extension": [
            {"url": f"{prefix}.url", "valueUri": url},
            {"url": f"{prefix}.title", "valueString": f"Title of {url.rsplit('/', 1)[-1]}"},
            {"url": f"{prefix}.resourceTrigger", "extension": trigger},
        ],
    }
    if status is not None:
        basic["modifierExtension"] = [{"url": f"{prefix}.status", "valueCode": status}]
    return basic
