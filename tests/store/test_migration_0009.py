"""Migration 0009 (subscription delivery) up and down on both backends: a consumer
registered with a webhook URL before it gets its webhook subscription and a signing
secret, and a queued event goes with its subscription."""

from __future__ import annotations

import json

from sqlalchemy import Engine, inspect, text

from store import downgrade, make_engine, upgrade
from store.models import Subscription
from store.types import utcnow
from sync.delivery import fan_out


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_0009_up_down_up(empty_db_url: str) -> None:
    upgrade(empty_db_url, "0008")
    engine = make_engine(empty_db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO consumer (id, name, kind, client_id, secret_hash, scopes,"
                " webhook_url, active, created_at) VALUES"
                " (1, 'crm', 'crm', 'c1', 'h', '[\"system/Patient.rs\"]',"
                " 'https://crm.example.org/e', true, CURRENT_TIMESTAMP),"
                " (2, 'portal', 'portal', 'c2', 'h', '[\"system/Patient.rs\"]',"
                " NULL, true, CURRENT_TIMESTAMP),"
                " (3, 'all', 'crm', 'c3', 'h', '[\"system/*.rs\", \"askonce.admin\"]',"
                " 'https://all.example.org/e', true, CURRENT_TIMESTAMP),"
                " (4, 'blind', 'crm', 'c4', 'h', '[\"system/Patient.s\"]',"
                " 'https://blind.example.org/e', true, CURRENT_TIMESTAMP)"
            )
        )
    upgrade(empty_db_url)
    engine.dispose()
    assert "subscription_event" in _tables(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT consumer_id, channel_type, topic, endpoint, status, secret,"
                " delivered_through, attempts FROM subscription ORDER BY consumer_id"
            )
        ).all()
        types = {
            consumer: json.loads(filters) if isinstance(filters, str) else filters
            for consumer, filters in conn.execute(
                text("SELECT consumer_id, filters FROM subscription")
            )
        }
    # the types each webhook carries follow from its consumer's read scopes
    assert types == {
        1: {"types": ["Patient"]},
        3: {"types": ["Encounter", "Patient"]},
        4: {"types": []},
    }
    rows = rows[:1]
    consumer_id, channel, topic, endpoint, status, secret, through, attempts = rows[0]
    assert (consumer_id, channel, topic, endpoint, status) == (
        1,
        "webhook",
        "*",
        "https://crm.example.org/e",
        "active",
    )
    assert secret.startswith("whsec_") and len(secret) > 40
    assert (through, attempts) == (0, 0)

    # the migrated webhook is a working subscription: its row loads and it is handed events
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        sub = session.get(
            Subscription,
            session.scalar(text("SELECT id FROM subscription WHERE consumer_id = 1")),
        )
        assert sub is not None and sub.created_at is not None
        assert sub.filters == {"types": ["Patient"]}
        session.execute(
            text(
                "INSERT INTO outbox (event_type, aggregate_type, aggregate_id, payload,"
                " created_at, next_attempt_at, attempts) VALUES ('patient.created', 'Patient',"
                " 'g1', '{}', :now, :now, 0)"
            ),
            {"now": utcnow().replace(tzinfo=None) if engine.dialect.name == "sqlite" else utcnow()},
        )
        assert fan_out(session).queued == 2  # the webhooks of consumers 1 and 3
        session.commit()

    downgrade(empty_db_url, "0008")
    engine.dispose()
    assert "subscription_event" not in _tables(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("subscription")}
    assert "delivered_through" not in columns and "secret" not in columns
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM subscription")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM consumer")).scalar_one() == 4
    upgrade(empty_db_url)
    engine.dispose()
    assert "subscription_event" in _tables(engine)
    engine.dispose()
