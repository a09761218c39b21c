"""Which sources beat starts: intervals, cron, stalled runs; and the beat entry itself."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.schedules import crontab
from sqlalchemy.orm import Session, sessionmaker

from store.models import SyncRun
from store.types import utcnow
from sync import InvalidScheduleError, beat_schedule, due_sources, parse_schedule
from tests.sync.helpers import add_source


def test_schedules_are_intervals_or_cron() -> None:
    assert parse_schedule("900") == timedelta(seconds=900)
    assert parse_schedule("15m") == timedelta(minutes=15)
    assert parse_schedule("2h") == timedelta(hours=2)
    assert isinstance(parse_schedule("*/30 * * * *"), crontab)
    for bad in ("soon", "0", "* * *", "99 * * * *"):
        with pytest.raises(InvalidScheduleError):
            parse_schedule(bad)


def test_due_sources(session_factory: sessionmaker[Session]) -> None:
    never_run = add_source(session_factory, "never-run", schedule="15m")
    recent = add_source(session_factory, "recent", schedule="15m")
    old = add_source(session_factory, "old", schedule="15m")
    busy = add_source(session_factory, "busy", schedule="1m")
    stalled = add_source(session_factory, "stalled", schedule="1m")
    add_source(session_factory, "manual")
    add_source(session_factory, "disabled", schedule="1m", enabled=False)
    now = utcnow()
    with session_factory() as session:
        session.add_all(
            [
                SyncRun(source_id=recent, status="ok", started_at=now - timedelta(minutes=5)),
                SyncRun(source_id=old, status="ok", started_at=now - timedelta(minutes=20)),
                SyncRun(
                    source_id=busy,
                    status="running",
                    started_at=now - timedelta(hours=1),
                    detail={"heartbeat": (now - timedelta(seconds=5)).isoformat()},
                ),
                SyncRun(
                    source_id=stalled,
                    status="running",
                    started_at=now - timedelta(hours=1),
                    detail={"heartbeat": (now - timedelta(hours=1)).isoformat()},
                ),
            ]
        )
        session.commit()
        assert due_sources(session, now=now) == [never_run, old, stalled]


def test_beat_ticks_with_an_expiry() -> None:
    entry = beat_schedule()["askonce-sync-due-sources"]
    assert entry["task"] == "askonce.sync.schedule_due"
    assert entry["options"]["expires"] == entry["schedule"]
