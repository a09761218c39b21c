"""Consumers: the registered systems (CRM, portal, messaging) that may ask for tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.auth.scopes import ScopeSet, validate_scopes
from gateway.auth.secrets import hash_secret, new_client_id, new_client_secret, verify_secret
from store.models import Consumer, Subscription
from store.types import utcnow
from sync.delivery import (
    CHANNEL_WEBHOOK,
    TOPICS,
    add_webhook,
    check_endpoint,
    delete_subscription,
    new_webhook_secret,
)

CONSUMER_KINDS = ("crm", "portal", "messaging", "steward")


class ConsumerExistsError(ValueError):
    """A consumer with that name is already registered."""


@dataclass(frozen=True, slots=True)
class Credentials:
    consumer_id: int
    name: str
    client_id: str
    #: Shown once, at registration; only its hash is stored.
    client_secret: str
    scopes: list[str]
    #: The webhook's Standard Webhooks signing secret (``whsec_…``), when it has one.
    webhook_secret: str | None = None


def webhook_types(scopes: Sequence[str]) -> list[str]:
    """The resource types whose change events a consumer's webhook carries: those its
    scopes may read."""
    granted = ScopeSet.of(scopes)
    return [t.resource_type for t in TOPICS.values() if granted.allows(t.resource_type, "r")]


def register_consumer(
    session: Session,
    name: str,
    kind: str,
    scopes: Sequence[str],
    webhook_url: str | None = None,
    *,
    allow_http: bool = False,
) -> Credentials:
    """Register a consumer and return its credentials (the secret is not retrievable later).

    With ``webhook_url`` its webhook receives the change events its scopes may read,
    signed with the returned ``webhook_secret``. Raises ValueError (a
    :class:`sync.delivery.SubscriptionSettingsError` for the URL) on bad input."""
    if kind not in CONSUMER_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CONSUMER_KINDS)}")
    clean = validate_scopes(scopes)
    if not clean:
        raise ValueError("at least one scope is required")
    if session.scalar(select(Consumer.id).where(Consumer.name == name)) is not None:
        raise ConsumerExistsError(f"consumer {name!r} already exists")
    secret = new_client_secret()
    consumer = Consumer(
        name=name,
        kind=kind,
        client_id=new_client_id(),
        secret_hash=hash_secret(secret),
        scopes=clean,
        webhook_url=webhook_url,
        active=True,
    )
    session.add(consumer)
    session.flush()
    webhook_secret = None
    if webhook_url:
        _, webhook_secret = add_webhook(
            session, consumer.id, webhook_url, webhook_types(clean), allow_http=allow_http
        )
    return Credentials(consumer.id, name, consumer.client_id, secret, clean, webhook_secret)


def authenticate_client(session: Session, client_id: str, secret: str) -> Consumer | None:
    """The active consumer with these credentials, or None."""
    consumer = session.scalar(select(Consumer).where(Consumer.client_id == client_id))
    if consumer is None or not consumer.active:
        return None
    return consumer if verify_secret(secret, consumer.secret_hash) else None


def granted_scopes(consumer: Consumer, requested: str | None) -> list[str] | None:
    """The scopes to put in a token: the requested subset, or all granted if none asked.

    Returns None when a requested scope was never granted to the consumer
    (RFC 6749 §5.2 ``invalid_scope``).
    """
    allowed = list(consumer.scopes or [])
    if not requested:
        return allowed
    wanted = [s for s in requested.split() if s]
    if any(s not in allowed for s in wanted):
        return None
    return list(dict.fromkeys(wanted))


@dataclass(frozen=True, slots=True)
class WebhookChange:
    """What :func:`set_webhook` did. ``secret`` is shown once: a new webhook's, or a
    rotated one."""

    url: str | None
    secret: str | None = None


def set_webhook(
    session: Session,
    consumer: Consumer,
    url: str | None,
    *,
    rotate_secret: bool = False,
    allow_http: bool = False,
) -> WebhookChange:
    """Give a consumer a webhook at ``url``, move it there, or (``url`` None) end it; with
    ``rotate_secret`` its signing secret is replaced. A moved webhook keeps its queue and
    its secret (unless rotated); an ended one drops its queue."""
    current = session.scalar(
        select(Subscription).where(
            Subscription.consumer_id == consumer.id, Subscription.channel_type == CHANNEL_WEBHOOK
        )
    )
    if url is None:
        if current is not None:
            delete_subscription(session, current)
        consumer.webhook_url = None
        return WebhookChange(None)
    secret = None
    if current is None:
        _, secret = add_webhook(
            session, consumer.id, url, webhook_types(consumer.scopes or []), allow_http=allow_http
        )
    else:
        current.endpoint = check_endpoint(url, allow_http=allow_http, path="webhook_url")
        current.updated_at = utcnow()
        if rotate_secret:
            secret = current.secret = new_webhook_secret()
    consumer.webhook_url = url
    return WebhookChange(url, secret)
