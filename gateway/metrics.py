"""``GET /metrics``: the state of the sync, the MPI and the outbox for Prometheus.

Every value is read from the database when the scraper asks (a collector, not counters
kept in this process): the workers, beat, the MLLP listener and each API process write
the same tables, so any one API process tells the whole deployment's state. Only counts,
timestamps and source names: no patient data, so the route needs no token, like the
health probes. The text is Prometheus' exposition format
(https://prometheus.io/docs/instrumenting/exposition_formats/), rendered by
``prometheus_client``.

What an operator alerts on:

- ``time() - askonce_sync_last_success_timestamp_seconds > 2 * schedule``: a source
  stopped syncing (and ``askonce_sync_last_run_failed``: its last run failed);
- ``time() - askonce_sync_catch_up_owed_timestamp_seconds`` that keeps growing: a gap in
  a source's push notifications whose catch-up sync has not succeeded yet (the EHR is
  down, or refuses the credentials);
- ``askonce_push_subscription_status{status!~"active|requested"}``: an EHR stopped a
  Subscription askonce created there and could not be made to start it again;
- ``askonce_source_records{status="quarantined"}`` rising: a source sends what does not
  validate;
- ``time() - askonce_hl7v2_last_message_timestamp_seconds`` above what the feed is ever
  quiet for: an HL7 v2 feed went silent (the interface engine stopped, or cannot reach
  the listener); ``rate(askonce_hl7v2_messages_total{answer="rejected"}[1h])``: it sends
  what is not ADT;
- ``askonce_outbox_oldest_undelivered_age_seconds``: change events are not being handed
  to the subscriptions (no worker or beat runs the delivery tick);
- ``askonce_subscription_oldest_pending_age_seconds`` and
  ``askonce_subscription_status{status="error"}``: a consumer's endpoint is not taking
  its notifications;
- ``askonce_outbox_oldest_event_age_seconds`` well past the retention
  (``ASKONCE_OUTBOX_RETENTION_DAYS``): nothing prunes (no beat), or a subscription that
  stopped receiving holds its events back;
- ``askonce_review_items_open``: the stewards' queue;
- ``askonce_export_jobs{status="running"}`` that stays up: Bulk Data exports nobody
  works on (no worker consumes the queue).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import func, select
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
    SyncRun,
)
from store.types import utcnow
from sync import catchup, feed, subscriptions
from sync.delivery import oldest_pending_at
from sync.runner import RUN_FAILED, RUN_OK, RUN_RUNNING

router = APIRouter(tags=["health"])

#: The OpenMetrics media type a scraper may ask for instead of the text format.
OPENMETRICS = "application/openmetrics-text"


def _seconds(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def read_metrics(session: Session, now: datetime | None = None) -> list[Metric]:
    """The metric families, read in one session (see the module docstring)."""
    now = now or utcnow()
    sources = session.execute(
        select(Source.id, Source.name, Source.kind, Source.enabled).order_by(Source.name)
    ).all()
    names = {source_id: name for source_id, name, _kind, _enabled in sources}
    families: list[Metric] = []

    enabled = GaugeMetricFamily(
        "askonce_source_enabled", "1 while the source is enabled.", labels=["source", "kind"]
    )
    for _id, name, kind, is_enabled in sources:
        enabled.add_metric([name, kind], 1.0 if is_enabled else 0.0)
    families.append(enabled)

    records = GaugeMetricFamily(
        "askonce_source_records",
        "Source records by source, resource type and status (active, quarantined, pending, "
        "deleted).",
        labels=["source", "resource_type", "status"],
    )
    for source_id, resource_type, status, count in session.execute(
        select(
            SourceRecord.source_id, SourceRecord.resource_type, SourceRecord.status, func.count()
        ).group_by(SourceRecord.source_id, SourceRecord.resource_type, SourceRecord.status)
    ):
        if source_id in names:
            records.add_metric([names[source_id], resource_type, status], count)
    families.append(records)

    families.extend(_run_families(session, names))
    families.extend(_feed_families(session, names))

    goldens = GaugeMetricFamily(
        "askonce_golden_records", "Golden records by status.", labels=["status"]
    )
    for status, count in session.execute(
        select(GoldenPatient.status, func.count()).group_by(GoldenPatient.status)
    ):
        goldens.add_metric([status], count)
    families.append(goldens)

    review = GaugeMetricFamily(
        "askonce_review_items_open", "Open review items by kind.", labels=["kind"]
    )
    for kind, count in session.execute(
        select(ReviewItem.kind, func.count())
        .where(ReviewItem.status == "open")
        .group_by(ReviewItem.kind)
    ):
        review.add_metric([kind], count)
    families.append(review)

    exports = GaugeMetricFamily(
        "askonce_export_jobs",
        "Bulk Data exports kept, by status (accepted, running, completed, failed).",
        labels=["status"],
    )
    for status, count in session.execute(
        select(ExportJob.status, func.count()).group_by(ExportJob.status)
    ):
        exports.add_metric([status], count)
    families.append(exports)

    undelivered = Outbox.delivered_at.is_(None)  # the partial index ix_outbox_undelivered
    pending = session.scalar(select(func.count()).select_from(Outbox).where(undelivered))
    oldest = session.scalar(
        select(Outbox.created_at).where(undelivered).order_by(Outbox.id).limit(1)
    )
    families.append(
        GaugeMetricFamily(
            "askonce_outbox_undelivered",
            "Change events not handed to the subscriptions yet.",
            value=pending or 0,
        )
    )
    oldest_s = _seconds(oldest)
    families.append(
        GaugeMetricFamily(
            "askonce_outbox_oldest_undelivered_age_seconds",
            "Age of the oldest change event not handed to the subscriptions (0 when none).",
            value=max(0.0, now.timestamp() - oldest_s) if oldest_s is not None else 0.0,
        )
    )
    kept = _seconds(session.scalar(select(Outbox.created_at).order_by(Outbox.id).limit(1)))
    families.append(
        GaugeMetricFamily(
            "askonce_outbox_oldest_event_age_seconds",
            "Age of the first change event kept, the one retention deletes next "
            "(ASKONCE_OUTBOX_RETENTION_DAYS; a subscription that has not received it keeps "
            "it; 0 when none).",
            value=max(0.0, now.timestamp() - kept) if kept is not None else 0.0,
        )
    )
    families.extend(_subscription_families(session, now))
    return families


def _feed_families(session: Session, names: dict[int, str]) -> Iterator[Metric]:
    """Each HL7 v2 feed's last message and its messages by answer (:mod:`sync.feed`)."""
    last = GaugeMetricFamily(
        "askonce_hl7v2_last_message_timestamp_seconds",
        "When the HL7 v2 feed's last message was taken in or refused (Unix time); absent: "
        "none yet.",
        labels=["source"],
    )
    messages = CounterMetricFamily(
        "askonce_hl7v2_messages",
        "HL7 v2 messages the feed sent, by answer: accepted (AA), quarantined (AE: kept "
        "with what could not be taken in), rejected (AR: not an ADT message).",
        labels=["source", "answer"],
    )
    for source_id, fed in sorted(feed.feeds(session).items()):
        if source_id not in names:
            continue
        name = names[source_id]
        if fed.last_message_at is not None:
            last.add_metric([name], fed.last_message_at.timestamp())
        for answer in feed.COUNTS:
            messages.add_metric([name, answer], getattr(fed, answer))
    yield from (last, messages)


def _subscription_families(session: Session, now: datetime) -> Iterator[Metric]:
    """Each subscription's status, queue, failures and last send (ids, never endpoints)."""
    labels = ["consumer", "subscription", "channel"]
    status = GaugeMetricFamily(
        "askonce_subscription_status",
        "1 for the subscription's status (requested, active, error, off).",
        labels=[*labels, "status"],
    )
    pending = GaugeMetricFamily(
        "askonce_subscription_pending_events",
        "Events handed to the subscription and not acknowledged by its endpoint yet.",
        labels=labels,
    )
    oldest = GaugeMetricFamily(
        "askonce_subscription_oldest_pending_age_seconds",
        "Age of the subscription's oldest unacknowledged event (0 when none).",
        labels=labels,
    )
    attempts = GaugeMetricFamily(
        "askonce_subscription_failed_attempts",
        "Failed sends in a row (0 after a success).",
        labels=labels,
    )
    sent = GaugeMetricFamily(
        "askonce_subscription_last_sent_timestamp_seconds",
        "When the endpoint last acknowledged a notification (Unix time).",
        labels=labels,
    )
    for sub, consumer, first_pending in session.execute(
        select(Subscription, Consumer.name, oldest_pending_at())
        .join(Consumer, Consumer.id == Subscription.consumer_id)
        .order_by(Consumer.name, Subscription.created_at, Subscription.id)
    ):
        values = [consumer, sub.id, sub.channel_type]
        status.add_metric([*values, sub.status], 1.0)
        pending.add_metric(values, max(0, sub.events_since_start - sub.delivered_through))
        first_s = _seconds(first_pending)
        oldest.add_metric(values, max(0.0, now.timestamp() - first_s) if first_s else 0.0)
        attempts.add_metric(values, sub.attempts)
        last_s = _seconds(sub.last_sent_at)
        if last_s is not None:
            sent.add_metric(values, last_s)
    yield from (status, pending, oldest, attempts, sent)


def _run_families(session: Session, names: dict[int, str]) -> Iterator[Metric]:
    """Each source's latest run, its last successful one, and whether one is running."""
    labels = ["source"]
    running = GaugeMetricFamily(
        "askonce_sync_running", "1 while a run of the source is in progress.", labels=labels
    )
    started = GaugeMetricFamily(
        "askonce_sync_last_run_start_timestamp_seconds",
        "When the source's latest run started (Unix time).",
        labels=labels,
    )
    failed = GaugeMetricFamily(
        "askonce_sync_last_run_failed", "1 when the source's latest run failed.", labels=labels
    )
    resources = GaugeMetricFamily(
        "askonce_sync_last_run_resources",
        "Resources the source's latest run read.",
        labels=labels,
    )
    quarantined = GaugeMetricFamily(
        "askonce_sync_last_run_quarantined",
        "Resources the source's latest run quarantined.",
        labels=labels,
    )
    errors = GaugeMetricFamily(
        "askonce_sync_last_run_errors", "Errors of the source's latest run.", labels=labels
    )
    success = GaugeMetricFamily(
        "askonce_sync_last_success_timestamp_seconds",
        "When the source's latest successful run finished (Unix time).",
        labels=labels,
    )
    owed = GaugeMetricFamily(
        "askonce_sync_catch_up_owed_timestamp_seconds",
        "When a gap in the source's push notifications asked for the catch-up sync it still "
        "owes (Unix time); absent when it owes none.",
        labels=labels,
    )
    for source_id, at in catchup.owed(session).items():
        if source_id in names:
            owed.add_metric([names[source_id]], at.timestamp())
    pushing = GaugeMetricFamily(
        "askonce_push_subscription_status",
        "1 for the status the EHR last reported of each Subscription askonce created there"
        " (active, requested, error, off; gone: deleted there; unreachable: not read).",
        labels=["source", "subscription", "status"],
    )
    heard = GaugeMetricFamily(
        "askonce_push_subscription_last_notification_timestamp_seconds",
        "When a notification of the Subscription last arrived (Unix time); absent: never.",
        labels=["source", "subscription"],
    )
    for item in subscriptions.managed(session):
        if item.source_id in names:
            name = names[item.source_id]
            pushing.add_metric([name, item.id, item.status or "unknown"], 1.0)
            if item.heard_at is not None:
                heard.add_metric([name, item.id], item.heard_at.timestamp())
    latest_ids = select(func.max(SyncRun.id)).group_by(SyncRun.source_id).scalar_subquery()
    latest = {
        run.source_id: run
        for run in session.scalars(select(SyncRun).where(SyncRun.id.in_(latest_ids)))
    }
    in_progress = set(
        session.scalars(select(SyncRun.source_id).where(SyncRun.status == RUN_RUNNING).distinct())
    )
    for source_id, name in sorted(names.items(), key=lambda item: item[1]):
        running.add_metric([name], 1.0 if source_id in in_progress else 0.0)
        run = latest.get(source_id)
        if run is None:
            continue
        started_s = _seconds(run.started_at)
        if started_s is not None:
            started.add_metric([name], started_s)
        failed.add_metric([name], 1.0 if run.status == RUN_FAILED else 0.0)
        resources.add_metric([name], run.resources)
        quarantined.add_metric([name], run.quarantined)
        errors.add_metric([name], run.errors)
    for source_id, finished in session.execute(
        select(SyncRun.source_id, func.max(SyncRun.finished_at))
        .where(SyncRun.status == RUN_OK)
        .group_by(SyncRun.source_id)
    ):
        finished_s = _seconds(finished)
        if source_id in names and finished_s is not None:
            success.add_metric([names[source_id]], finished_s)
    yield from (running, started, failed, resources, quarantined, errors, success, owed)
    yield from (pushing, heard)


class StoreCollector(Collector):
    """Reads :func:`read_metrics` from the database at each scrape."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._session_factory = session_factory

    def collect(self) -> Iterator[Metric]:
        with self._session_factory() as session:
            yield from read_metrics(session)


def registry_for(session_factory: sessionmaker[Session]) -> CollectorRegistry:
    """A registry of its own per app (the process-wide default one would collect the
    first app's database for every app of a test run)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(session_factory))
    return registry


@router.get(
    "/metrics",
    summary="Prometheus metrics: sources, sync runs, records, golden records, review, outbox",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}, OPENMETRICS: {}}}},
)
def metrics(request: Request) -> Response:
    """Prometheus' text format, or OpenMetrics when the scraper's ``Accept`` asks for it."""
    registry: CollectorRegistry = request.app.state.metrics
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), headers={"Content-Type": content_type})
