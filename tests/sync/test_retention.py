"""Retention (``sync.retention``) on both backends: what every subscription has received
goes once it is past the retention, with its queue rows; what one has not received stays,
and is still delivered, in order, under its numbers; old sync runs go, each source's
latest stays."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from askonce.runtime import build_runtime
from askonce.settings import Settings
from store.models import Consumer, Outbox, Subscription, SubscriptionEvent, SyncRun
from store.types import utcnow
from sync.celery_app import beat_schedule
from sync.delivery import deliver, query_events
from sync.intake import parse_notification
from sync.retention import prune
from sync.tasks import prune as prune_task
from tests.sync.helpers import Clock, Endpoint, add_source
from tests.sync.test_delivery import (
    add_consumer,
    handshaken,
    patient_event,
    sub_row,
    subscribe,
)

DAYS = 30
PAST = timedelta(days=DAYS + 1)
PORTAL = "https://portal.example.org/hook"


def events(session_factory: sessionmaker[Session], *goldens: str) -> None:
    for golden in goldens:
        patient_event(session_factory, "patient.updated", golden, version=2)


def backdate(session_factory: sessionmaker[Session], goldens: set[str], age: timedelta) -> None:
    """Make the events of ``goldens`` ``age`` old."""
    with session_factory() as session:
        session.execute(
            update(Outbox).where(Outbox.aggregate_id.in_(goldens)).values(created_at=utcnow() - age)
        )
        session.commit()


def outbox(session_factory: sessionmaker[Session]) -> list[str]:
    with session_factory() as session:
        return list(session.scalars(select(Outbox.aggregate_id).order_by(Outbox.id)))


def queue(session_factory: sessionmaker[Session], sub_id: str) -> list[int]:
    with session_factory() as session:
        return list(
            session.scalars(
                select(SubscriptionEvent.event_number)
                .where(SubscriptionEvent.subscription_id == sub_id)
                .order_by(SubscriptionEvent.event_number)
            )
        )


def focus_of(bodies: list[dict[str, object]]) -> list[tuple[int, str]]:
    out = []
    for body in bodies:
        note = parse_notification(body)
        out.extend(zip(note.event_numbers, [rid for _, rid in note.focus], strict=True))
    return out


def test_received_events_past_retention_go_with_their_queue_rows_and_nothing_else(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    clock = Clock()
    sub_id = handshaken(session_factory, http, clock)
    events(session_factory, "g1", "g2", "g3", "g4", "g5")
    assert deliver(session_factory, client=http, clock=clock).events_delivered == 5
    backdate(session_factory, {"g1", "g2", "g3"}, PAST)
    # An old event not handed out yet (no fan-out since): it must not go.
    with session_factory() as session:
        session.add(
            Outbox(
                event_type="patient.updated",
                aggregate_type="Patient",
                aggregate_id="late",
                payload={"version": 2},
                created_at=utcnow() - timedelta(days=40),
            )
        )
        session.commit()

    pruned = prune(session_factory, outbox_days=DAYS, run_days=0)

    assert (pruned.outbox_events, pruned.queue_rows, pruned.held_by) == (3, 3, [])
    assert pruned.complete
    assert outbox(session_factory) == ["g4", "g5", "late"]
    assert queue(session_factory, sub_id) == [4, 5]
    # Pruning again finds nothing. Once handed out (it predates the subscription, which
    # does not hear it), the late event still waits behind the recent ones before it:
    # the walk goes by id and stops at the first event to keep.
    assert prune(session_factory, outbox_days=DAYS, run_days=0).outbox_events == 0
    assert deliver(session_factory, client=http, clock=clock).events_fanned_out == 1
    assert prune(session_factory, outbox_days=DAYS, run_days=0).outbox_events == 0
    # $events answers what is kept: 4 and 5.
    with session_factory() as session:
        sub = session.get(Subscription, sub_id)
        assert sub is not None
        bundle, _ = query_events(session, sub, since=1)
    assert [n for n, _ in focus_of([bundle])] == [4, 5]
    backdate(session_factory, {"g4", "g5"}, PAST)
    pruned = prune(session_factory, outbox_days=DAYS, run_days=0)
    assert (pruned.outbox_events, pruned.queue_rows) == (3, 2)
    assert outbox(session_factory) == []


def test_what_a_subscription_has_not_received_stays_and_is_still_delivered(
    session_factory: sessionmaker[Session],
) -> None:
    answers = {"crm.example.org": 200, "portal.example.org": 503}
    bodies: dict[str, list[dict[str, object]]] = {"crm.example.org": [], "portal.example.org": []}

    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        bodies[host].append(json.loads(request.content))
        return httpx.Response(answers[host])

    clock = Clock()
    crm, _ = add_consumer(session_factory, "crm")
    portal, _ = add_consumer(session_factory, "portal")
    crm_sub = subscribe(session_factory, crm)
    portal_sub = subscribe(session_factory, portal, endpoint=PORTAL)
    answers["portal.example.org"] = 200
    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        deliver(session_factory, client=http, clock=clock)  # both handshakes taken
        answers["portal.example.org"] = 503
        events(session_factory, "g1", "g2", "g3", "g4")
        deliver(session_factory, client=http, clock=clock)
        assert sub_row(session_factory, crm_sub).delivered_through == 4
        assert sub_row(session_factory, portal_sub).delivered_through == 0
        backdate(session_factory, {"g1", "g2", "g3", "g4"}, PAST)

        pruned = prune(session_factory, outbox_days=DAYS, run_days=0)

        # The CRM's received rows go; every event stays for the portal, which holds them.
        assert (pruned.outbox_events, pruned.queue_rows) == (0, 4)
        assert pruned.held_by == [portal_sub]
        assert outbox(session_factory) == ["g1", "g2", "g3", "g4"]
        assert queue(session_factory, crm_sub) == []
        assert queue(session_factory, portal_sub) == [1, 2, 3, 4]

        # The portal comes back: it gets all four, in order, under their numbers.
        answers["portal.example.org"] = 200
        clock.advance(3600)
        bodies["portal.example.org"].clear()
        deliver(session_factory, client=http, clock=clock)
    assert focus_of(bodies["portal.example.org"]) == [
        (1, "g1"),
        (2, "g2"),
        (3, "g3"),
        (4, "g4"),
    ]
    pruned = prune(session_factory, outbox_days=DAYS, run_days=0)
    assert (pruned.outbox_events, pruned.queue_rows, pruned.held_by) == (4, 4, [])
    assert outbox(session_factory) == []


def test_a_subscription_not_listening_does_not_hold_events_past_the_retention(
    session_factory: sessionmaker[Session], endpoint: Endpoint, http: httpx.Client
) -> None:
    """Switched off (or its consumer deactivated) with events still queued: past the
    retention they go, and switched back on it sees the gap in the event numbers."""
    clock = Clock()
    paused = handshaken(session_factory, http, clock)
    gone_consumer, _ = add_consumer(session_factory, "old-portal")
    gone = subscribe(session_factory, gone_consumer, endpoint=PORTAL)
    deliver(session_factory, client=http, clock=clock)  # its handshake
    endpoint.answers = [503, 503]  # neither takes the next events
    events(session_factory, "g1", "g2", "g3")
    deliver(session_factory, client=http, clock=clock)
    with session_factory() as session:
        sub = session.get(Subscription, paused)
        consumer = session.get(Consumer, gone_consumer)
        assert sub is not None and consumer is not None
        sub.status = "off"
        consumer.active = False
        session.commit()
    backdate(session_factory, {"g1", "g2", "g3"}, PAST)
    events(session_factory, "g4")  # recent, handed out while neither hears anything
    assert deliver(session_factory, client=http, clock=clock).events_queued == 0

    pruned = prune(session_factory, outbox_days=DAYS, run_days=0)

    assert (pruned.outbox_events, pruned.queue_rows, pruned.held_by) == (3, 6, [])
    assert outbox(session_factory) == ["g4"]
    assert queue(session_factory, paused) == queue(session_factory, gone) == []
    assert sub_row(session_factory, paused).delivered_through == 3
    # Back on: the next event is number 4; 1 to 3 are the gap.
    with session_factory() as session:
        sub = session.get(Subscription, paused)
        assert sub is not None
        sub.status = "active"
        session.commit()
    endpoint.requests.clear()
    events(session_factory, "g5")
    clock.advance(3600)  # past the backoff of its failed send
    deliver(session_factory, client=http, clock=clock)
    assert focus_of(endpoint.bodies()) == [(4, "g5")]


def test_pruning_stops_at_the_first_event_not_handed_out(
    session_factory: sessionmaker[Session], http: httpx.Client
) -> None:
    """An event whose transaction committed late has a lower id than events handed out
    before it: the walk by id stops there rather than step over it."""
    clock = Clock()
    handshaken(session_factory, http, clock)
    events(session_factory, "g1", "g2", "g3")
    deliver(session_factory, client=http, clock=clock)
    backdate(session_factory, {"g1", "g2", "g3"}, PAST)
    with session_factory() as session:
        session.execute(update(Outbox).where(Outbox.aggregate_id == "g2").values(delivered_at=None))
        session.commit()

    pruned = prune(session_factory, outbox_days=DAYS, run_days=0)

    assert pruned.outbox_events == 1
    assert outbox(session_factory) == ["g2", "g3"]


def test_pruning_goes_in_batches_and_stops_when_its_time_is_up(
    session_factory: sessionmaker[Session], http: httpx.Client
) -> None:
    clock = Clock()
    sub_id = handshaken(session_factory, http, clock)
    goldens = [f"g{n}" for n in range(12)]
    events(session_factory, *goldens)
    deliver(session_factory, client=http, clock=clock)
    backdate(session_factory, set(goldens), PAST)

    cut_short = prune(session_factory, outbox_days=DAYS, run_days=DAYS, max_seconds=0)
    assert not cut_short.complete
    assert (cut_short.outbox_events, cut_short.queue_rows) == (0, 0)

    pruned = prune(session_factory, outbox_days=DAYS, run_days=0, batch=5)
    assert (pruned.outbox_events, pruned.queue_rows, pruned.complete) == (12, 12, True)
    assert outbox(session_factory) == []
    assert queue(session_factory, sub_id) == []
    assert sub_row(session_factory, sub_id).events_since_start == 12  # numbers go on


def test_zero_days_keeps_everything(
    session_factory: sessionmaker[Session], http: httpx.Client
) -> None:
    clock = Clock()
    handshaken(session_factory, http, clock)
    events(session_factory, "g1")
    deliver(session_factory, client=http, clock=clock)
    backdate(session_factory, {"g1"}, timedelta(days=3650))
    assert prune(session_factory, outbox_days=0, run_days=0).as_dict() == {
        "queue_rows": 0,
        "outbox_events": 0,
        "sync_runs": 0,
        "export_jobs": 0,
        "held_by": [],
        "complete": True,
    }
    assert outbox(session_factory) == ["g1"]


def _run(source_id: int, status: str, started: datetime) -> SyncRun:
    finished = None if status == "running" else started + timedelta(minutes=5)
    return SyncRun(source_id=source_id, status=status, started_at=started, finished_at=finished)


def test_old_sync_runs_go_but_each_sources_latest_and_running_ones_stay(
    session_factory: sessionmaker[Session],
) -> None:
    busy = add_source(session_factory, "busy")
    quiet = add_source(session_factory, "quiet")
    now = utcnow()
    old = now - timedelta(days=100)
    with session_factory() as session:
        runs = [
            _run(busy, "ok", old),  # goes
            _run(busy, "failed", old + timedelta(hours=1)),  # goes
            _run(busy, "running", old + timedelta(hours=2)),  # stays: still running
            _run(busy, "ok", now - timedelta(days=1)),  # stays: recent
            _run(quiet, "ok", old),  # stays: its source's latest run
        ]
        session.add_all(runs)
        session.commit()
        kept = [runs[2].id, runs[3].id, runs[4].id]

    pruned = prune(session_factory, outbox_days=DAYS, run_days=90)

    assert pruned.sync_runs == 2
    with session_factory() as session:
        assert list(session.scalars(select(SyncRun.id).order_by(SyncRun.id))) == kept


def test_beat_prunes_hourly_and_the_task_uses_the_wired_retention(
    engine: Engine, db_url: str, session_factory: sessionmaker[Session]
) -> None:
    assert beat_schedule()["askonce-prune"] == {
        "task": prune_task.name,
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    }
    assert beat_schedule(prune_interval_s=600)["askonce-prune"]["schedule"] == 600
    build_runtime(Settings(database_url=db_url, outbox_retention_days=7))
    patient_event(session_factory, "patient.updated", "g1")
    with session_factory() as session:
        session.execute(update(Outbox).values(delivered_at=utcnow()))
        session.commit()
    backdate(session_factory, {"g1"}, timedelta(days=6))
    assert prune_task.delay().get(timeout=30)["outbox_events"] == 0  # 6 days < 7
    backdate(session_factory, {"g1"}, timedelta(days=8))
    assert prune_task.delay().get(timeout=30)["outbox_events"] == 1


def test_the_embedded_delivery_thread_prunes_too(
    engine: Engine, db_url: str, session_factory: sessionmaker[Session]
) -> None:
    runtime = build_runtime(
        Settings(database_url=db_url, delivery_interval_s=0.05, outbox_retention_days=DAYS)
    )
    patient_event(session_factory, "patient.updated", "g1")
    backdate(session_factory, {"g1"}, PAST)
    with runtime.delivery_loop():
        deadline = time.monotonic() + 30
        # the thread hands the event out (no subscription hears it), then prunes it
        while outbox(session_factory) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert outbox(session_factory) == []
