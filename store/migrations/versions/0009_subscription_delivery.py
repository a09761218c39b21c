"""Subscription delivery: each subscription's queue of numbered events and its sender state;
a webhook subscription for every consumer registered with a webhook URL

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 19:10:00

The outbox was written with every change and never delivered. ``sync.delivery`` now hands
each outbox event to the subscriptions whose topic and filters it matches
(``subscription_event``: the subscription's event number, which the FHIR backport calls
``eventsSinceSubscriptionStart``, and the outbox row), marks the outbox row handed out
(``outbox.delivered_at``), then sends each subscription's queue in order. The new
``subscription`` columns are the sender's state: how far the receiver has acknowledged
(``delivered_through``), when to try again (``next_attempt_at``, ``attempts``), when it
last sent anything (``last_sent_at``, for heartbeats), the channel's options
(``heartbeat_s``, ``max_count``) and a webhook's signing secret (``secret``).

``subscription_event`` has no foreign keys, on purpose: on PostgreSQL each key's check
locks the row it names (``FOR KEY SHARE``), and the two checks took ~90 us of each
queued row's ~125 us (``bench.delivery``'s fan-out). ``sync.delivery.delete_subscription``
deletes a subscription's queue with it; nothing deletes outbox rows (a retention job
added later must delete the queue rows that name them first).

Consumers registered with ``webhook_url`` before this revision get their webhook
subscription here, with a new secret; ``askonce consumers webhook NAME --rotate-secret``
shows a new one.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import uuid

import sqlalchemy as sa
from alembic import op

import store.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

#: Bytes of a webhook signing secret (Standard Webhooks: 24 to 64).
SECRET_BYTES = 32
#: A SMART scope that lets a backend consumer read a resource type: the rule of
#: ``gateway.auth.scopes`` as of this revision, frozen here (importing the gateway would
#: load the whole web app into every process that migrates: +20 MB in bench.ingest).
_READ_SCOPE = re.compile(r"^(?:system|user)/(\*|Patient|Encounter)\.(?:read|\*|c?r?u?d?s?)$")
_TYPES = ("Patient", "Encounter")


def _readable_types(scopes: list[str]) -> list[str]:
    """The types a webhook carries: those the consumer's scopes may read."""
    readable: set[str] = set()
    for scope in scopes:
        match = _READ_SCOPE.match(scope)
        if match is None:
            continue
        permissions = scope.rsplit(".", 1)[1]
        if permissions in ("read", "*") or "r" in permissions:
            readable.update(_TYPES if match.group(1) == "*" else (match.group(1),))
    return sorted(readable)


def upgrade() -> None:
    op.add_column("subscription", sa.Column("secret", sa.String(length=100), nullable=True))
    op.add_column("subscription", sa.Column("heartbeat_s", sa.Integer(), nullable=True))
    op.add_column("subscription", sa.Column("max_count", sa.Integer(), nullable=True))
    op.add_column(
        "subscription",
        sa.Column("delivered_through", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.add_column(
        "subscription",
        sa.Column("next_attempt_at", store.types.UTCDateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "subscription",
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column(
        "subscription",
        sa.Column("last_sent_at", store.types.UTCDateTime(timezone=True), nullable=True),
    )
    op.add_column(
        "subscription",
        sa.Column("updated_at", store.types.UTCDateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "subscription_event",
        sa.Column("subscription_id", sa.String(length=36), nullable=False),
        sa.Column("event_number", sa.BigInteger(), nullable=False),
        sa.Column("outbox_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "subscription_id", "event_number", name=op.f("pk_subscription_event")
        ),
    )
    _webhooks_of_existing_consumers()


def _webhooks_of_existing_consumers() -> None:
    conn = op.get_bind()
    consumers = conn.execute(
        sa.text("SELECT id, webhook_url, scopes FROM consumer WHERE webhook_url IS NOT NULL")
    ).all()
    for consumer_id, url, scopes in consumers:
        granted = json.loads(scopes) if isinstance(scopes, str) else scopes
        conn.execute(
            sa.text(
                "INSERT INTO subscription (id, consumer_id, status, topic, filters, channel_type,"
                " endpoint, headers, payload_content, events_since_start, resource, created_at,"
                " secret, delivered_through, attempts)"
                " VALUES (:id, :consumer, 'active', '*', :filters, 'webhook', :url, '[]',"
                " 'id-only', 0, '{}', CURRENT_TIMESTAMP, :secret, 0, 0)"
            ),
            {
                "id": str(uuid.uuid4()),
                "consumer": consumer_id,
                "url": url,
                "filters": json.dumps({"types": _readable_types(granted or [])}),
                "secret": "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode(),
            },
        )


def downgrade() -> None:
    op.execute("DELETE FROM subscription WHERE channel_type = 'webhook'")
    op.drop_table("subscription_event")
    for column in (
        "updated_at",
        "last_sent_at",
        "attempts",
        "next_attempt_at",
        "delivered_through",
        "max_count",
        "heartbeat_s",
        "secret",
    ):
        op.drop_column("subscription", column)
