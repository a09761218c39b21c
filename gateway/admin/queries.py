"""Plain functions behind the admin routes (no FastAPI): what a steward looks at."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from connectors.config import HL7V2_KIND
from mpi import review_item_dict
from store.models import (
    Consumer,
    Link,
    LinkHistory,
    ReviewItem,
    Source,
    SourceRecord,
    Subscription,
    SyncCursor,
    SyncRun,
)
from sync import catchup, feed, subscriptions
from sync.delivery import oldest_pending_at
from sync.reparse import is_stale

#: Rows per admin list page when ``limit`` is not given, and the most allowed.
DEFAULT_ADMIN_LIMIT = 50
MAX_ADMIN_LIMIT = 500
#: Crosswalk rows fetched from the database per round trip.
CROSSWALK_CHUNK = 1000


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def run_json(run: SyncRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "source_id": run.source_id,
        "status": run.status,
        "full": run.full,
        "pages": run.pages,
        "resources": run.resources,
        "quarantined": run.quarantined,
        "skipped": run.skipped,
        "errors": run.errors,
        "detail": run.detail,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
    }


def list_sources(session: Session) -> list[dict[str, Any]]:
    out = []
    for source in session.scalars(select(Source).order_by(Source.name)):
        latest = session.scalar(
            select(SyncRun)
            .where(SyncRun.source_id == source.id)
            .order_by(SyncRun.started_at.desc(), SyncRun.id.desc())
            .limit(1)
        )
        cursors = list(session.scalars(select(SyncCursor).where(SyncCursor.source_id == source.id)))
        debt = next((c.cursor for c in cursors if c.resource_type == catchup.CATCH_UP_KEY), None)
        fed = feed.read_feed(source.id, cursors) if source.kind == HL7V2_KIND else None
        out.append(
            {
                "id": source.id,
                "name": source.name,
                "kind": source.kind,
                "base_url": source.base_url,
                "resource_types": source.resource_types,
                "schedule": source.schedule,
                "trust_rank": source.trust_rank,
                "enabled": source.enabled,
                "removing_since": _iso(source.removing_since),
                "auth_kind": (source.auth or {}).get("kind"),
                "cursors": {c.resource_type: _iso(c.updated_at) for c in cursors},
                "latest_run": run_json(latest) if latest else None,
                "catch_up_owed_since": _iso(catchup.read_debt(debt)),
                "ehr_subscriptions": [m.as_dict() for m in subscriptions.read_managed(cursors)],
                # An HL7 v2 feed's last message and answers (sync.feed); null for others.
                "hl7v2_feed": fed.as_dict() if fed is not None else None,
                # Its stored Patients are being read again (sync.reparse): pending, and
                # the last source record id done (null: not started, or none).
                "reparse": {
                    "pending": is_stale(source),
                    "through": (source.parsed_with or {}).get("through"),
                },
            }
        )
    return out


def list_runs(session: Session, source_id: int | None, limit: int) -> list[dict[str, Any]]:
    stmt = select(SyncRun).order_by(SyncRun.started_at.desc(), SyncRun.id.desc()).limit(limit)
    if source_id is not None:
        stmt = stmt.where(SyncRun.source_id == source_id)
    return [run_json(r) for r in session.scalars(stmt)]


def list_quarantine(
    session: Session, source_id: int | None, after_id: int, limit: int, *, with_raw: bool
) -> list[dict[str, Any]]:
    stmt = (
        select(SourceRecord)
        .where(SourceRecord.status == "quarantined", SourceRecord.id > after_id)
        .order_by(SourceRecord.id)
        .limit(limit)
    )
    if source_id is not None:
        stmt = stmt.where(SourceRecord.source_id == source_id)
    out = []
    for rec in session.scalars(stmt):
        item = {
            "id": rec.id,
            "source_id": rec.source_id,
            "resource_type": rec.resource_type,
            "resource_id": rec.resource_id,
            "error": rec.error,
            "received_at": _iso(rec.received_at),
        }
        if with_raw:
            item["raw"] = rec.raw
        out.append(item)
    return out


#: What a review item asks (``mpi.decision.ReviewSpec.kind``).
REVIEW_KINDS = ("possible-match", "vetoed", "duplicate-golden")


def list_review(
    session: Session, status: str, after_id: int, limit: int, kind: str | None = None
) -> list[dict[str, Any]]:
    stmt = (
        select(ReviewItem)
        .where(ReviewItem.status == status, ReviewItem.id > after_id)
        .order_by(ReviewItem.id)
        .limit(limit)
    )
    if kind is not None:
        stmt = stmt.where(ReviewItem.kind == kind)
    return [review_item_dict(i) for i in session.scalars(stmt)]


def links_of(session: Session, golden_id: str) -> dict[str, Any]:
    links = session.execute(
        select(Link, SourceRecord)
        .join(SourceRecord, SourceRecord.id == Link.source_record_id)
        .where(Link.golden_id == golden_id)
        .order_by(Link.id)
    ).all()
    history = session.scalars(
        select(LinkHistory)
        .where((LinkHistory.golden_id == golden_id) | (LinkHistory.other_golden_id == golden_id))
        .order_by(LinkHistory.id)
    ).all()
    return {
        "golden_id": golden_id,
        "links": [
            {
                "source_record_id": link.source_record_id,
                "source_id": rec.source_id,
                "resource_type": rec.resource_type,
                "resource_id": rec.resource_id,
                "grade": link.grade,
                "score": link.score,
                "method": link.method,
                "flagged": link.flagged,
                "explanation": link.explanation,
                "updated_at": _iso(link.updated_at),
            }
            for link, rec in links
        ],
        "history": [
            {
                "id": h.id,
                "action": h.action,
                "source_record_id": h.source_record_id,
                "golden_id": h.golden_id,
                "other_golden_id": h.other_golden_id,
                "grade": h.grade,
                "score": h.score,
                "method": h.method,
                "actor": h.actor,
                "at": _iso(h.at),
            }
            for h in history
        ],
    }


def consumer_json(consumer: Consumer) -> dict[str, Any]:
    return {
        "id": consumer.id,
        "name": consumer.name,
        "kind": consumer.kind,
        "client_id": consumer.client_id,
        "scopes": consumer.scopes,
        "webhook_url": consumer.webhook_url,
        "active": consumer.active,
        "created_at": _iso(consumer.created_at),
    }


def subscription_json(
    sub: Subscription, consumer: str, oldest_pending: datetime | None = None
) -> dict[str, Any]:
    """A subscription as an operator sees it: state and counts, never its secret or
    channel headers (the endpoint, which the operator must be able to check, is shown).
    ``oldest_pending_at`` is when its first unacknowledged event was written: one older
    than ``ASKONCE_OUTBOX_RETENTION_DAYS`` holds the retention back."""
    return {
        "id": sub.id,
        "consumer": consumer,
        "channel": sub.channel_type,
        "topic": sub.topic,
        "endpoint": sub.endpoint,
        "status": sub.status,
        "payload": sub.payload_content,
        "events_since_start": sub.events_since_start,
        "delivered_through": sub.delivered_through,
        "pending": max(0, sub.events_since_start - sub.delivered_through),
        "oldest_pending_at": _iso(oldest_pending),
        "failed_attempts": sub.attempts,
        "error": sub.error,
        "next_attempt_at": _iso(sub.next_attempt_at),
        "last_sent_at": _iso(sub.last_sent_at),
        "created_at": _iso(sub.created_at),
    }


def subscriptions_query() -> Select[Subscription, str, datetime]:
    """Subscriptions with their consumer's name and :func:`sync.delivery.oldest_pending_at`,
    in the admin list's order."""
    return (
        select(Subscription, Consumer.name, oldest_pending_at())
        .join(Consumer, Consumer.id == Subscription.consumer_id)
        .order_by(Consumer.name, Subscription.created_at, Subscription.id)
    )


def list_subscriptions(session: Session, status: str | None = None) -> list[dict[str, Any]]:
    query = subscriptions_query()
    if status:
        query = query.where(Subscription.status == status)
    return [subscription_json(sub, name, oldest) for sub, name, oldest in session.execute(query)]


def list_consumers(session: Session) -> list[dict[str, Any]]:
    return [consumer_json(c) for c in session.scalars(select(Consumer).order_by(Consumer.name))]


CROSSWALK_HEADER = ["golden_id", "source", "resource_type", "resource_id", "grade", "method"]


def crosswalk_csv(session: Session) -> Iterator[str]:
    """Every active link as CSV: which source id is which golden id (keyset, chunked)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CROSSWALK_HEADER)
    yield buffer.getvalue()
    last = 0
    while True:
        rows = session.execute(
            select(
                Link.id,
                Link.golden_id,
                Source.name,
                SourceRecord.resource_type,
                SourceRecord.resource_id,
                Link.grade,
                Link.method,
            )
            .join(SourceRecord, SourceRecord.id == Link.source_record_id)
            .join(Source, Source.id == SourceRecord.source_id)
            .where(Link.id > last)
            .order_by(Link.id)
            .limit(CROSSWALK_CHUNK)
        ).all()
        if not rows:
            return
        buffer.seek(0)
        buffer.truncate()
        for row in rows:
            writer.writerow(list(row)[1:])
        last = rows[-1][0]
        yield buffer.getvalue()
