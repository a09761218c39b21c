"""Services mode: a real worker on real Redis and PostgreSQL syncs a source, then runs
beat's delivery task, and the subscriber's endpoint (a real HTTP receiver) gets the
handshake and every new golden Patient, numbered from 1; then the worker prunes them once
they are past the retention."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from askonce.runtime import Runtime
from gateway.auth.consumers import register_consumer
from store.models import Outbox, Subscription
from store.types import utcnow
from sync.celery_app import beat_schedule
from sync.delivery import PATIENT_TOPIC, apply_spec, subscription_spec
from sync.intake import parse_notification
from sync.tasks import deliver, prune, run_source
from tests.integration.conftest import Worker, latest_run, wait_for
from tests.receiver import Receiver, running_receiver
from tests.sync.helpers import add_source, patient, write_ndjson

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

TASK_TIMEOUT_S = 120


@pytest.fixture
def hook() -> Iterator[Receiver]:
    yield from running_receiver()


def test_a_worker_delivers_what_a_worker_synced(
    services: Runtime,
    worker: Worker,
    pg_sessions: sessionmaker[Session],
    hook: Receiver,
    tmp_path: Path,
) -> None:
    with pg_sessions() as session:
        creds = register_consumer(session, "crm", "crm", ["system/Patient.rs"])
        resource = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "profiles",
            "criteria": PATIENT_TOPIC.url,
            "channel": {"type": "rest-hook", "endpoint": hook.url, "payload": "application/json"},
        }
        sub = Subscription(consumer_id=creds.consumer_id, events_since_start=0)
        apply_spec(sub, subscription_spec(resource), resource)
        session.add(sub)
        session.commit()
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient(f"p{n}", f"Fam{n}", f"Giv{n}") for n in range(4)])
    write_ndjson(folder, "Encounter", [])
    source_id = add_source(pg_sessions, base_url=str(folder))
    queue = services.settings.task_queue

    run_source.apply_async(kwargs={"source_id": source_id}, queue=queue)

    def synced() -> bool:
        run = latest_run(pg_sessions, source_id)
        return run is not None and run.status == "ok"

    wait_for(synced, timeout_s=TASK_TIMEOUT_S, what="the source's run", log=worker.log_path)
    report = deliver.apply_async(queue=queue).get(timeout=TASK_TIMEOUT_S)

    assert report["handshakes"] == 1
    assert report["events_delivered"] == 4
    notes = [parse_notification(r.json()) for r in hook.wait_for(2)]
    assert notes[0].kind == "handshake"
    assert [n for note in notes[1:] for n in note.event_numbers] == [1, 2, 3, 4]
    assert beat_schedule()["askonce-deliver-events"]["task"] == deliver.name

    # Beat's hourly prune, on the worker: the events every subscription received, once
    # past the retention (30 days), go with their queue rows.
    with pg_sessions() as session:
        events = session.scalar(select(func.count()).select_from(Outbox))
        session.execute(update(Outbox).values(created_at=utcnow() - timedelta(days=31)))
        session.commit()
    pruned = prune.apply_async(queue=queue).get(timeout=TASK_TIMEOUT_S)
    assert (pruned["outbox_events"], pruned["queue_rows"], pruned["held_by"]) == (events, 4, [])
    assert beat_schedule()["askonce-prune"]["task"] == prune.name
