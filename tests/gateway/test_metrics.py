"""``GET /metrics`` on both backends: what Prometheus reads is what the tables hold, in
the text format by default and OpenMetrics when asked, with no patient data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from store.models import (
    Consumer,
    ExportJob,
    GoldenPatient,
    Outbox,
    ReviewItem,
    Source,
    SourceRecord,
    Subscription,
    SubscriptionEvent,
    SyncRun,
)

NOW = datetime.now(UTC).replace(microsecond=0)
SECRET_NAME = "Oyelaran-Whitfield"


def _record(source: Source, rid: str, status: str, resource_type: str = "Patient") -> SourceRecord:
    return SourceRecord(
        source_id=source.id,
        resource_type=resource_type,
        resource_id=rid,
        raw={"resourceType": resource_type, "id": rid, "name": [{"family": SECRET_NAME}]},
        normalized={},
        content_hash=f"hash-{rid}",
        status=status,
    )


def _seed(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        a = Source(name="ehr-a", kind="fhir", base_url="http://127.0.0.1:1/fhir")
        b = Source(name="ehr-b", kind="ndjson", base_url="/data/b", enabled=False)
        session.add_all([a, b])
        session.flush()
        session.add_all(
            [
                _record(a, "p1", "active"),
                _record(a, "p2", "active"),
                _record(a, "p3", "quarantined"),
                _record(a, "e1", "pending", "Encounter"),
                _record(b, "p1", "deleted"),
            ]
        )
        session.add_all(
            [
                # ehr-a: an ok run, then a failed one (the latest); ehr-b: one running.
                SyncRun(
                    source_id=a.id,
                    status="ok",
                    resources=40,
                    started_at=NOW - timedelta(hours=2),
                    finished_at=NOW - timedelta(hours=1, minutes=50),
                ),
                SyncRun(
                    source_id=a.id,
                    status="failed",
                    resources=7,
                    quarantined=2,
                    errors=1,
                    started_at=NOW - timedelta(minutes=30),
                    finished_at=NOW - timedelta(minutes=29),
                ),
                SyncRun(source_id=b.id, status="running", started_at=NOW - timedelta(minutes=5)),
            ]
        )
        session.add_all(
            [
                GoldenPatient(id="g1", status="active"),
                GoldenPatient(id="g2", status="active"),
                GoldenPatient(id="g3", status="merged", merged_into="g1"),
            ]
        )
        session.add_all(
            [
                ReviewItem(kind="possible-match", status="open", golden_id="g1"),
                ReviewItem(kind="possible-match", status="open", golden_id="g2"),
                ReviewItem(kind="duplicate-golden", status="open", golden_id="g1"),
                ReviewItem(kind="possible-match", status="resolved", golden_id="g2"),
            ]
        )
        event = {"event_type": "patient.updated", "aggregate_type": "Patient", "payload": {}}
        session.add_all(
            [
                Outbox(**event, aggregate_id="g1", created_at=NOW - timedelta(minutes=10)),
                Outbox(
                    **event, aggregate_id="g2", created_at=NOW - timedelta(minutes=3), attempts=2
                ),
                Outbox(
                    **event,
                    aggregate_id="g1",
                    created_at=NOW - timedelta(hours=5),
                    delivered_at=NOW,
                ),
            ]
        )
        session.commit()


def _since_now() -> float:
    """Seconds since :data:`NOW` (the ages a scrape reports grow with the run's time)."""
    return (datetime.now(UTC) - NOW).total_seconds()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_read_the_tables(
    session_factory: sessionmaker[Session], client: TestClient
) -> None:
    _seed(session_factory)
    with session_factory() as session:
        for status in ("running", "completed", "completed"):
            session.add(
                ExportJob(client_id="crm", status=status, request_url="x", params={}, position={})
            )
        session.commit()
    since = _since_now()
    response = client.get("/metrics")
    until = _since_now()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "Authorization" not in response.request.headers  # no token needed
    assert SECRET_NAME not in response.text and "p1" not in response.text
    got = _samples(response.text)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("askonce_source_enabled", source="ehr-a", kind="fhir") == 1
    assert value("askonce_source_enabled", source="ehr-b", kind="ndjson") == 0
    records = {
        (dict(labels)["source"], dict(labels)["resource_type"], dict(labels)["status"]): v
        for (name, labels), v in got.items()
        if name == "askonce_source_records"
    }
    assert records == {
        ("ehr-a", "Patient", "active"): 2,
        ("ehr-a", "Patient", "quarantined"): 1,
        ("ehr-a", "Encounter", "pending"): 1,
        ("ehr-b", "Patient", "deleted"): 1,
    }
    assert value("askonce_sync_running", source="ehr-a") == 0
    assert value("askonce_sync_running", source="ehr-b") == 1
    assert value("askonce_sync_last_run_failed", source="ehr-a") == 1
    assert value("askonce_sync_last_run_failed", source="ehr-b") == 0
    assert value("askonce_sync_last_run_resources", source="ehr-a") == 7
    assert value("askonce_sync_last_run_quarantined", source="ehr-a") == 2
    assert value("askonce_sync_last_run_errors", source="ehr-a") == 1
    assert (
        value("askonce_sync_last_run_start_timestamp_seconds", source="ehr-a")
        == (NOW - timedelta(minutes=30)).timestamp()
    )
    # The last success is the earlier run's end, not the failed run's.
    assert (
        value("askonce_sync_last_success_timestamp_seconds", source="ehr-a")
        == (NOW - timedelta(hours=1, minutes=50)).timestamp()
    )
    assert ("askonce_sync_last_success_timestamp_seconds", (("source", "ehr-b"),)) not in got
    assert value("askonce_golden_records", status="active") == 2
    assert value("askonce_golden_records", status="merged") == 1
    assert value("askonce_review_items_open", kind="possible-match") == 2
    assert value("askonce_review_items_open", kind="duplicate-golden") == 1
    assert value("askonce_export_jobs", status="running") == 1
    assert value("askonce_export_jobs", status="completed") == 2
    assert value("askonce_outbox_undelivered") == 2
    age = value("askonce_outbox_oldest_undelivered_age_seconds")
    # the 10-minute-old event, not the delivered one (NOW is when this module was imported)
    assert 600 + since - 0.01 <= age <= 600 + until + 0.01
    # the first event kept (lowest id), which retention prunes first: the same one here
    kept = value("askonce_outbox_oldest_event_age_seconds")
    assert 600 + since - 0.01 <= kept <= 600 + until + 0.01


def test_metrics_of_an_empty_database_and_openmetrics(client: TestClient) -> None:
    got = _samples(client.get("/metrics").text)
    assert got[("askonce_outbox_undelivered", ())] == 0
    assert got[("askonce_outbox_oldest_undelivered_age_seconds", ())] == 0
    assert got[("askonce_outbox_oldest_event_age_seconds", ())] == 0
    assert not any(name == "askonce_source_records" for name, _ in got)
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_subscription_metrics(session_factory: sessionmaker[Session], client: TestClient) -> None:
    with session_factory() as session:
        crm = Consumer(name="crm", kind="crm", client_id="c1", secret_hash="h", scopes=[])
        session.add(crm)
        session.flush()
        failing = Subscription(
            id="s-failing",
            consumer_id=crm.id,
            status="error",
            topic="t",
            endpoint="https://crm.example.org/secret-path",
            events_since_start=5,
            delivered_through=3,
            attempts=4,
            last_sent_at=NOW - timedelta(hours=1),
        )
        idle = Subscription(
            id="s-idle",
            consumer_id=crm.id,
            status="active",
            topic="*",
            channel_type="webhook",
            endpoint="https://crm.example.org/events",
        )
        session.add_all([failing, idle])
        session.flush()
        for number, minutes in ((3, 40), (4, 20), (5, 10)):
            event = Outbox(
                event_type="patient.updated",
                aggregate_type="Patient",
                aggregate_id="g1",
                payload={},
                created_at=NOW - timedelta(minutes=minutes),
                delivered_at=NOW,
            )
            session.add(event)
            session.flush()
            session.add(
                SubscriptionEvent(
                    subscription_id="s-failing", event_number=number, outbox_id=event.id
                )
            )
        session.commit()
    since = _since_now()
    response = client.get("/metrics")
    until = _since_now()
    assert "secret-path" not in response.text
    got = _samples(response.text)
    failing_labels = {"consumer": "crm", "subscription": "s-failing", "channel": "rest-hook"}
    idle_labels = {"consumer": "crm", "subscription": "s-idle", "channel": "webhook"}

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert value("askonce_subscription_status", **failing_labels, status="error") == 1
    assert value("askonce_subscription_status", **idle_labels, status="active") == 1
    assert value("askonce_subscription_pending_events", **failing_labels) == 2
    assert value("askonce_subscription_pending_events", **idle_labels) == 0
    age = value("askonce_subscription_oldest_pending_age_seconds", **failing_labels)
    assert 1200 + since - 0.01 <= age <= 1200 + until + 0.01  # event 4, the first not acknowledged
    assert value("askonce_subscription_oldest_pending_age_seconds", **idle_labels) == 0
    assert value("askonce_subscription_failed_attempts", **failing_labels) == 4
    assert (
        value("askonce_subscription_last_sent_timestamp_seconds", **failing_labels)
        == (NOW - timedelta(hours=1)).timestamp()
    )
