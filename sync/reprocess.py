"""Reprocess a source's quarantined records: run their stored resources through the pipeline.

A resource is quarantined with the content hash of what the source sent, so the next
syncs skip it for as long as the source sends the same content (only a mapping defect
is kept without a hash, and retried). When the cause was on askonce's side (a source
option such as ``mrn_system`` or ``default_region``, a match setting, a validation or
mapping fixed by an upgrade), the records need not wait for the EHR to touch them:
:func:`reprocess_quarantined` reads their stored resources and ingests them again,
exactly as a sync would (:func:`sync.pipeline.ingest_page`: validation, the MPI, events,
Encounter attachment), Patients before Encounters so that an Encounter that waited
for its Patient is attached in the same call. A resource still invalid stays
quarantined with its error as of now. Each transaction holds at most
:data:`~sync.pipeline.MAX_PATIENTS_PER_TRANSACTION` records and the source's writer lock
(:func:`sync.runner.lock_source`), so a sync chunk of the same source waits, or this does.

Left as they are: entries the connector could not read (``unreadable-…``: what is kept
is an OperationOutcome naming their position, not a resource), resources without a
valid id (``missing-id-…``: no pipeline run can store them), resources whose text
held an unpaired UTF-16 surrogate (what is kept has U+FFFD in its place, not what the
source sent), and types the pipeline does not sync.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, func, not_, select
from sqlalchemy.orm import Session

from connectors import Page
from store.models import Source as SourceRow
from store.models import SourceRecord
from sync.pipeline import (
    MAX_PATIENTS_PER_TRANSACTION,
    SUPPORTED_TYPES,
    UNREADABLE_ID_PREFIX,
    IngestResult,
    UnknownSourceError,
    ingest_page,
)
from sync.records import MISSING_ID_PREFIX, STATUS_QUARANTINED, SURROGATE_ERROR
from sync.runner import bound_patient_options, lock_source

log = logging.getLogger(__name__)

#: What a reprocessing reports of the pipeline's counts.
REPORTED = ("stored", "quarantined", "attached", "golden_created", "review_items")


@dataclass
class ReprocessResult:
    """What one call did: how many quarantined records it took up (``reprocessed``), what
    the pipeline did with them (``ingest``: ``stored``, still ``quarantined``, Encounters
    ``attached``, ``golden_created``, ``review_items``) and how many it did not reach
    (``remaining``, past its ``limit``)."""

    reprocessed: int = 0
    remaining: int = 0
    ingest: IngestResult = field(default_factory=IngestResult)
    #: Ids of the source records taken up (for the audit trail; never logged).
    record_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        counts = self.ingest.as_dict()
        return {
            "reprocessed": self.reprocessed,
            **{key: counts[key] for key in REPORTED},
            "remaining": self.remaining,
            "record_ids": self.record_ids,
        }


class ReprocessError(ValueError):
    """A request this module cannot do (an unsupported resource type)."""


def _replayable(
    source_id: int, resource_type: str, record_ids: Sequence[int] | None
) -> ColumnElement[bool]:
    """The quarantined records of the source and type that hold a resource to ingest."""
    clauses: list[ColumnElement[bool]] = [
        SourceRecord.source_id == source_id,
        SourceRecord.resource_type == resource_type,
        SourceRecord.status == STATUS_QUARANTINED,
        # Never a resource to ingest (unreadable), or never one with a valid id.
        not_(SourceRecord.resource_id.startswith(UNREADABLE_ID_PREFIX, autoescape=True)),
        not_(SourceRecord.resource_id.startswith(MISSING_ID_PREFIX, autoescape=True)),
    ]
    if record_ids is not None:
        clauses.append(SourceRecord.id.in_(list(record_ids)))
    return and_(*clauses)


def _kept_as_sent(record: SourceRecord) -> bool:
    """False for a record whose stored resource is not what the source sent."""
    if not isinstance(record.raw, dict):
        return False
    issues = (record.error or {}).get("issues") or []
    return not any(isinstance(i, dict) and i.get("reason") == SURROGATE_ERROR for i in issues)


def reprocess_quarantined(
    session_factory: Callable[[], Session],
    source_id: int,
    *,
    resource_type: str | None = None,
    record_ids: Sequence[int] | None = None,
    limit: int | None = None,
    default_region: str | None = None,
) -> ReprocessResult:
    """Ingest the source's quarantined records again (all of them, or those of
    ``resource_type``, or the source records ``record_ids``; at most ``limit``), each
    transaction committed as it ends. Raises :class:`UnknownSourceError` for an unknown
    source and :class:`ReprocessError` for a type the pipeline does not sync."""
    if resource_type is not None and resource_type not in SUPPORTED_TYPES:
        raise ReprocessError(
            f"{resource_type} is not synced; quarantined resources of types "
            f"{', '.join(SUPPORTED_TYPES)} can be reprocessed"
        )
    types = [t for t in SUPPORTED_TYPES if resource_type in (None, t)]  # Patients first
    with session_factory() as session:
        source = session.get(SourceRow, source_id)
        if source is None:
            raise UnknownSourceError(f"source {source_id} is not registered")
        options = bound_patient_options(source, default_region)
    result = ReprocessResult()
    budget = limit
    after = dict.fromkeys(types, 0)
    for rtype in types:
        while budget is None or budget > 0:
            size = (
                MAX_PATIENTS_PER_TRANSACTION
                if budget is None
                else min(budget, MAX_PATIENTS_PER_TRANSACTION)
            )
            with session_factory() as session:
                lock_source(session, source_id)
                records = session.scalars(
                    select(SourceRecord)
                    .where(
                        _replayable(source_id, rtype, record_ids), SourceRecord.id > after[rtype]
                    )
                    .order_by(SourceRecord.id)
                    .limit(size)
                ).all()
                if not records:
                    break
                after[rtype] = records[-1].id
                read = len(records)
                taken = [r for r in records if _kept_as_sent(r)]
                taken_ids = [r.id for r in taken]
                for record in taken:
                    # Not skipped as unchanged: the content is the same, the verdict may not be.
                    record.content_hash = ""
                    record.line_digest = None
                session.flush()
                page = Page(rtype, [dict(r.raw or {}) for r in taken], None)
                ingested = ingest_page(
                    session, source_id, page, options=options, write_cursor=False
                )
                session.commit()
            if budget is not None:
                budget -= read
            result.reprocessed += len(taken_ids)
            result.record_ids.extend(taken_ids)
            result.ingest.add(ingested)
    with session_factory() as session:
        for rtype in types:
            result.remaining += (
                session.scalar(
                    select(func.count())
                    .select_from(SourceRecord)
                    .where(
                        _replayable(source_id, rtype, record_ids), SourceRecord.id > after[rtype]
                    )
                )
                or 0
            )
    log.info(
        "quarantined records reprocessed",
        extra={
            "source_id": source_id,
            "count": result.reprocessed,
            "quarantined": result.ingest.quarantined,
        },
    )
    return result
