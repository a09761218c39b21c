"""The Subscriptions askonce keeps on an EHR, so that it pushes its changes to our intake.

Two kinds, both FHIR R4 ``Subscription`` resources with a ``rest-hook`` channel whose
header carries our intake token:

* **topic-based** (the R4 Subscriptions Backport IG,
  http://hl7.org/fhir/uv/subscriptions-backport/): ``criteria`` is the canonical URL of a
  SubscriptionTopic the server offers, with the ``backport-subscription`` profile, the
  payload content (``empty``, ``id-only``, ``full-resource``) and a heartbeat period as
  extensions. The server numbers its events, so a lost notification shows as a gap.
* **classic R4** (https://hl7.org/fhir/R4/subscription.html): ``criteria`` is a search
  (``Patient?``). With a payload the server sends each resource; without one, an empty
  ping.

:class:`EhrSubscriptions` creates, reads, reactivates and deletes them over the source's
own HTTP client (its auth, retries and rate limit). Nothing here knows our database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connectors.config import as_object
from connectors.errors import PermanentError
from connectors.http import FHIR_JSON, parse_json_object
from connectors.source import RestSource

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
BACKPORT_PROFILE = f"{BACKPORT}/backport-subscription"
EXT_PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
EXT_HEARTBEAT_PERIOD = f"{BACKPORT}/backport-heartbeat-period"
EXT_FILTER_CRITERIA = f"{BACKPORT}/backport-filter-criteria"
#: Payload contents of a topic-based Subscription.
CONTENTS = ("empty", "id-only", "full-resource")
#: What a Subscription's ``status`` means for the notifications (R4 subscription-status).
LIVE_STATUSES = frozenset({"requested", "active"})
HTTP_NOT_FOUND = 404
HTTP_GONE = 410
REASON = "askonce push intake: changes to the golden patient records"


class SubscriptionRequestError(ValueError):
    """A Subscription that cannot be asked for as given (the reason says which part)."""


@dataclass(frozen=True)
class SubscriptionRequest:
    """What to subscribe to, and where the notifications go."""

    endpoint: str
    token: str
    #: A SubscriptionTopic canonical (topic-based), or None for a classic ``criteria``.
    topic: str | None = None
    #: Classic: a search such as ``Patient?``; topic-based: None.
    criteria: str | None = None
    #: ``empty``, ``id-only`` or ``full-resource`` (classic: ``empty`` or ``full-resource``);
    #: "" for the default: ``id-only`` for a topic, ``full-resource`` for a criteria.
    content: str = ""
    heartbeat_s: int | None = None
    #: Topic-based: the topic's filters (``Patient?identifier=...``).
    filters: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.topic is None) == (self.criteria is None):
            raise SubscriptionRequestError("give either a topic or a criteria")
        if not self.content:
            default = "id-only" if self.topic is not None else "full-resource"
            object.__setattr__(self, "content", default)
        if not self.endpoint.startswith(("https://", "http://")):
            raise SubscriptionRequestError("the endpoint must be an http(s) URL")
        if self.content not in CONTENTS:
            raise SubscriptionRequestError(f"content must be one of {', '.join(CONTENTS)}")
        if self.criteria is not None:
            if "?" not in self.criteria or not self.criteria.split("?", 1)[0]:
                raise SubscriptionRequestError("a criteria is a search: Type?params")
            if self.content == "id-only":
                raise SubscriptionRequestError(
                    "a classic R4 Subscription has no id-only payload: use empty or full-resource"
                )
            if self.filters or self.heartbeat_s:
                raise SubscriptionRequestError(
                    "filters and a heartbeat belong to topic-based Subscriptions"
                )
        if self.heartbeat_s is not None and self.heartbeat_s <= 0:
            raise SubscriptionRequestError("the heartbeat period must be positive")

    @property
    def what(self) -> str:
        """The topic or the criteria."""
        return str(self.topic or self.criteria)

    def resource(self) -> dict[str, Any]:
        """The R4 Subscription to create."""
        channel: dict[str, Any] = {
            "type": "rest-hook",
            "endpoint": self.endpoint,
            "header": [f"Authorization: Bearer {self.token}"],
        }
        subscription: dict[str, Any] = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": REASON,
            "criteria": self.what,
            "channel": channel,
        }
        if self.topic is None:
            if self.content == "full-resource":
                channel["payload"] = FHIR_JSON
            return subscription
        subscription["meta"] = {"profile": [BACKPORT_PROFILE]}
        channel["payload"] = FHIR_JSON
        channel["_payload"] = {
            "extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": self.content}]
        }
        if self.heartbeat_s:
            channel["extension"] = [
                {"url": EXT_HEARTBEAT_PERIOD, "valueUnsignedInt": self.heartbeat_s}
            ]
        if self.filters:
            subscription["_criteria"] = {
                "extension": [{"url": EXT_FILTER_CRITERIA, "valueString": f} for f in self.filters]
            }
        return subscription


@dataclass(frozen=True)
class SubscriptionState:
    """A Subscription as the EHR reports it: ``status`` None when it no longer has it."""

    id: str
    status: str | None
    #: The server's ``error`` text, if any. It describes the channel, never a patient.
    error: str | None = None
    #: Its topic or criteria, endpoint, payload content and heartbeat period, as stored.
    what: str | None = None
    endpoint: str | None = None
    content: str | None = None
    heartbeat_s: int | None = None

    @property
    def live(self) -> bool:
        return self.status in LIVE_STATUSES


def bearer_tokens(resource: dict[str, Any]) -> list[str]:
    """The bearer tokens in a Subscription's ``channel.header`` lines."""
    channel = resource.get("channel")
    headers = channel.get("header") if isinstance(channel, dict) else None
    tokens = []
    for line in headers if isinstance(headers, list) else []:
        name, _, value = str(line).partition(":")
        scheme, _, token = value.strip().partition(" ")
        if name.strip().lower() == "authorization" and scheme.lower() == "bearer" and token:
            tokens.append(token.strip())
    return tokens


def _state(resource: dict[str, Any], fallback_id: str | None = None) -> SubscriptionState:
    if resource.get("resourceType") != "Subscription":
        raise PermanentError("the server did not answer with a Subscription")
    rid = resource.get("id") or fallback_id
    if not isinstance(rid, str) or not rid:
        raise PermanentError("the server's Subscription has no id")
    error = resource.get("error")
    channel = as_object(resource.get("channel"))
    endpoint, criteria = channel.get("endpoint"), resource.get("criteria")
    heartbeat = _extension(channel, EXT_HEARTBEAT_PERIOD, "valueUnsignedInt")
    content = _extension(channel.get("_payload"), EXT_PAYLOAD_CONTENT, "valueCode")
    return SubscriptionState(
        rid,
        str(resource.get("status") or "") or None,
        error if isinstance(error, str) else None,
        what=criteria if isinstance(criteria, str) else None,
        endpoint=endpoint if isinstance(endpoint, str) else None,
        content=content
        if isinstance(content, str)
        else ("full-resource" if channel.get("payload") else "empty"),
        heartbeat_s=heartbeat if isinstance(heartbeat, int) and heartbeat > 0 else None,
    )


def _extension(element: Any, url: str, key: str) -> Any:
    """The value of ``element``'s extension ``url`` (None when absent)."""
    extensions = element.get("extension") if isinstance(element, dict) else None
    for extension in extensions if isinstance(extensions, list) else []:
        if isinstance(extension, dict) and extension.get("url") == url:
            return extension.get(key)
    return None


class EhrSubscriptions:
    """Subscriptions on one FHIR server, through the source's HTTP client."""

    def __init__(self, source: RestSource) -> None:
        self.source = source
        self.http = source.http

    def create(self, request: SubscriptionRequest) -> SubscriptionState:
        """POST the Subscription (once: a retry could create two)."""
        response = self.http.request(
            "POST",
            "Subscription",
            body=request.resource(),
            headers={"Prefer": "return=representation"},
        )
        if response.content.strip():
            return _state(parse_json_object(response))
        location = response.headers.get("Location") or response.headers.get("Content-Location")
        rid = (location or "").split("/_history/")[0].rstrip("/").rsplit("/", 1)[-1]
        if not rid:
            raise PermanentError("the server created the Subscription but did not say its id")
        return self.read(rid)

    def read(self, subscription_id: str) -> SubscriptionState:
        raw = self._read(subscription_id)
        return SubscriptionState(subscription_id, None) if raw is None else _state(raw)

    def _read(self, subscription_id: str) -> dict[str, Any] | None:
        return self.source.fetch("Subscription", subscription_id)

    def reactivate(
        self, subscription_id: str, holds_token: Callable[[str], bool]
    ) -> SubscriptionState:
        """Ask a Subscription the server stopped (``error``, ``off``) to start again: the
        same resource, back to ``requested`` (a topic-based one handshakes again).

        ``holds_token(bearer)`` says whether the channel's header still carries our intake
        token: a server that masks headers when they are read would otherwise get the
        mask back, and every notification would be refused. Such a Subscription is left
        as it is (:class:`PermanentError`): it must be created again."""
        raw = self._read(subscription_id)
        if raw is None:
            return SubscriptionState(subscription_id, None)
        if not any(holds_token(t) for t in bearer_tokens(raw)):
            raise PermanentError(
                "the server does not give back the Subscription's intake token:"
                " subscribe again to start it"
            )
        resource = {k: v for k, v in raw.items() if k not in ("error", "meta")}
        if "meta" in raw and isinstance(raw["meta"], dict) and raw["meta"].get("profile"):
            resource["meta"] = {"profile": raw["meta"]["profile"]}
        resource["status"] = "requested"
        response = self.http.request("PUT", f"Subscription/{subscription_id}", body=resource)
        if response.content.strip():
            return _state(parse_json_object(response), subscription_id)
        return self.read(subscription_id)

    def status(self, subscription_id: str) -> dict[str, Any] | None:
        """The Backport's ``Subscription/{id}/$status``: a ``query-status`` with the count of
        events so far. None when the server does not list the operation, or no longer has
        the Subscription."""
        if not self.source.capabilities().supports_operation("status", "Subscription"):
            return None
        response = self.http.request(
            "GET",
            f"Subscription/{subscription_id}/$status",
            allow_statuses=frozenset({HTTP_NOT_FOUND, HTTP_GONE}),
        )
        if response.status_code in (HTTP_NOT_FOUND, HTTP_GONE):
            return None
        return parse_json_object(response)

    def delete(self, subscription_id: str) -> None:
        self.http.request(
            "DELETE",
            f"Subscription/{subscription_id}",
            allow_statuses=frozenset({HTTP_NOT_FOUND, HTTP_GONE}),
        )
