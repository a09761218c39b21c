"""BulkWriter inserts whose columns hold one value in every row (sent as one parameter
on PostgreSQL, not an array): the rows read back as written, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from store.bulk import OUTBOX_COLUMNS as COLUMNS
from store.bulk import BulkWriter
from store.models import Outbox


def test_single_valued_columns_round_trip(session_factory: sessionmaker[Session]) -> None:
    start = datetime(2024, 5, 1, 12, tzinfo=UTC)
    with session_factory() as session:
        bulk = BulkWriter(session)
        stamp = bulk.timestamp(start)
        same = [
            ("same", "Encounter", "1", bulk.json({"a": 1}), stamp, stamp, 0),
            ("same", "Encounter", "1", bulk.json({"a": 1}), stamp, stamp, 0),
        ]
        mixed = [
            (
                "mixed",
                "Encounter",
                str(i),
                bulk.json({"i": i}),
                stamp,
                bulk.timestamp(start + timedelta(minutes=i)),
                i % 2,
            )
            for i in range(5)
        ]
        alone = [("alone", "Patient", "9", bulk.json([]), stamp, stamp, 3)]
        for rows in (same, mixed, alone):
            bulk.insert("outbox", COLUMNS, rows, json_columns={"payload"})
        session.commit()
    with session_factory() as session:
        got = session.scalars(select(Outbox).order_by(Outbox.id)).all()
    assert [(o.event_type, o.aggregate_id, o.payload, o.attempts) for o in got] == [
        ("same", "1", {"a": 1}, 0),
        ("same", "1", {"a": 1}, 0),
        *[("mixed", str(i), {"i": i}, i % 2) for i in range(5)],
        ("alone", "9", [], 3),
    ]
    assert all(o.created_at == start for o in got)
    assert [o.next_attempt_at - start for o in got[2:7]] == [timedelta(minutes=i) for i in range(5)]
