"""The askonce tables (see ../shared/DESIGN.md, "The golden record").

Alembic owns the schema: these models describe it, migrations create it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from store.types import JSONType, UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# BIGINT autoincrement on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def new_uuid() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Source(Base):
    """A connected EHR (or file drop) that askonce pulls from or receives pushes from."""

    __tablename__ = "source"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # fhir | history | bulk | ndjson | push | hl7v2
    base_url: Mapped[str] = mapped_column(Text)
    auth: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # kind + secret refs
    resource_types: Mapped[list[str]] = mapped_column(
        JSONType, default=lambda: ["Patient", "Encounter"]
    )
    schedule: Mapped[str | None] = mapped_column(String(100), nullable=True)  # seconds or cron
    trust_rank: Mapped[int] = mapped_column(Integer, default=50)  # higher wins survivorship
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # vendor profile etc.
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    #: When its removal began (``sync.remove_source``); it stays disabled until it is gone.
    removing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: What its stored Patients were read with, ``{"stamp": {...}, "through": id | None}``
    #: (:mod:`sync.reparse`, migration 0017); null: an unknown version, before 0017.
    parsed_with: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class SourceRecord(Base):
    """Every resource received from a source, valid or not."""

    __tablename__ = "source_record"
    __table_args__ = (
        UniqueConstraint("source_id", "resource_type", "resource_id", name="uq_source_record_key"),
        Index("ix_source_record_status", "source_id", "resource_type", "status"),
        Index(
            "ix_source_record_line",
            "line_digest",
            sqlite_where=text("line_digest IS NOT NULL"),
            postgresql_where=text("line_digest IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign key (migration 0003: one trigger query per inserted record, locking the
    # same source row each time): records are only written by a sync of their source.
    # Deleting a source still deletes its records (a trigger on ``source``).
    source_id: Mapped[int] = mapped_column(Integer)
    resource_type: Mapped[str] = mapped_column(String(40))
    resource_id: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_updated: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Small columns first: SQLite reads a column stored after a document that spilled to
    # overflow pages by walking them (migration 0003).
    # active | quarantined | deleted | pending
    status: Mapped[str] = mapped_column(String(20), default="active")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    #: A Patient's match features in the compact form of ``mpi.features`` (versioned; read
    #: instead of ``normalized`` when a candidate is only compared). Null: not written yet.
    match_features: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: :func:`sync.records.line_digest` of the NDJSON line the record was last stored
    #: from (migration 0006); null when it came from elsewhere or its mapping failed.
    line_digest: Mapped[str | None] = mapped_column(String(32), nullable=True)
    raw: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    normalized: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class GoldenPatient(Base):
    """One real person: the surviving view over the source records linked to it."""

    __tablename__ = "golden_patient"
    __table_args__ = (Index("ix_golden_patient_updated", "last_updated"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    version: Mapped[int] = mapped_column(Integer, default=1)
    resource: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="active")  # active|merged|deleted
    merged_into: Mapped[str | None] = mapped_column(
        ForeignKey("golden_patient.id"), nullable=True, index=True
    )
    # Denormalized search columns (also kept in golden_search_token for multi-valued ones).
    birth_date: Mapped[str | None] = mapped_column(String(10), nullable=True, index=True)
    gender: Mapped[str | None] = mapped_column(String(10), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GoldenPatientVersion(Base):
    """Every version of a golden record, for vread and ``_history``."""

    __tablename__ = "golden_patient_version"
    #: ``GET /fhir/Patient/_history`` pages newest first by (time, id, version).
    __table_args__ = (
        Index("ix_golden_patient_version_recorded", "recorded_at", "golden_id", "version"),
    )

    # No foreign key (migration 0004): copied from its golden record's row by the
    # statement that writes it; a golden record's delete still takes its versions.
    golden_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20), default="active")
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GoldenSearchToken(Base):
    """Multi-valued search values of a golden record (name parts, identifiers, phones…).

    ``param`` is the FHIR search parameter name, ``system`` the token system where
    there is one, ``value`` the normalized value searched.
    """

    __tablename__ = "golden_search_token"
    __table_args__ = (
        Index("ix_golden_search_token_lookup", "param", "value", "system"),
        Index("ix_golden_search_token_golden", "golden_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign key (migration 0002): written only with its golden record; a golden
    # record's delete still takes its tokens (a trigger).
    golden_id: Mapped[str] = mapped_column(String(36))
    param: Mapped[str] = mapped_column(String(40))
    system: Mapped[str | None] = mapped_column(String(255), nullable=True)
    value: Mapped[str] = mapped_column(String(255))


class Link(Base):
    """The current link of one source record to one golden record."""

    __tablename__ = "link"
    __table_args__ = (Index("ix_link_golden", "golden_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign keys (migration 0004: two trigger queries per link): the MPI links the
    # records and golden records its transaction wrote or read. A record's delete still
    # takes its link; a golden record's is refused while a link names it (triggers).
    source_record_id: Mapped[int] = mapped_column(BigId, unique=True)
    golden_id: Mapped[str] = mapped_column(String(36))
    grade: Mapped[str] = mapped_column(String(20))  # certain|probable|possible|certainly-not
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    method: Mapped[str] = mapped_column(String(10), default="AUTO")  # AUTO | MANUAL
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)  # probable links
    explanation: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class LinkHistory(Base):
    """Append-only history of every link operation (link, unlink, merge, unmerge…)."""

    __tablename__ = "link_history"
    __table_args__ = (
        Index("ix_link_history_record", "source_record_id"),
        Index("ix_link_history_golden", "golden_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(20))
    source_record_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    golden_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    other_golden_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    grade: Mapped[str | None] = mapped_column(String(20), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    method: Mapped[str] = mapped_column(String(10), default="AUTO")
    actor: Mapped[str | None] = mapped_column(String(100), nullable=True)
    explanation: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MatchDecision(Base):
    """A steward's decision on a pair of source records; the algorithm never overrides it."""

    __tablename__ = "match_decision"
    __table_args__ = (
        UniqueConstraint("record_a_id", "record_b_id", name="uq_match_decision_pair"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    record_a_id: Mapped[int] = mapped_column(ForeignKey("source_record.id", ondelete="CASCADE"))
    record_b_id: Mapped[int] = mapped_column(
        ForeignKey("source_record.id", ondelete="CASCADE"), index=True
    )
    decision: Mapped[str] = mapped_column(String(20))  # match | no-match
    actor: Mapped[str] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReviewItem(Base):
    """A possible match (or a vetoed one, or two possibly duplicate golden records)."""

    __tablename__ = "review_item"
    __table_args__ = (Index("ix_review_item_status", "status", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(30))  # possible-match|vetoed|duplicate-golden
    status: Mapped[str] = mapped_column(String(20), default="open")  # open | resolved
    # No foreign keys (migration 0004), as for links: a record's delete still takes its
    # review items, a golden record's is refused while one names it (triggers).
    source_record_id: Mapped[int | None] = mapped_column(BigId, nullable=True, index=True)
    golden_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    other_golden_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    grade: Mapped[str | None] = mapped_column(String(20), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    resolution: Mapped[str | None] = mapped_column(String(20), nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FieldProvenance(Base):
    """Where each golden field's value came from, and by which survivorship rule."""

    __tablename__ = "field_provenance"
    __table_args__ = (
        Index("ix_field_provenance_golden", "golden_id", "field"),
        # A deleted record's trigger finds its rows (migration 0007).
        Index("ix_field_provenance_record", "source_record_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign keys (migration 0002): written only with its golden record, from the
    # members just read; deletes of either parent still cascade / set null (triggers).
    golden_id: Mapped[str] = mapped_column(String(36))
    field: Mapped[str] = mapped_column(String(100))
    value: Mapped[Any] = mapped_column(JSONType)
    source_record_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    rule: Mapped[str] = mapped_column(String(40))
    observed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BlockKey(Base):
    """Blocking keys of each source Patient record, for candidate lookup."""

    __tablename__ = "block_key"
    __table_args__ = (
        # On PostgreSQL the key index carries the record (migration 0005): a key's
        # members are read from the index alone.
        Index("ix_block_key_key", "key", postgresql_include=["source_record_id"]),
        Index("ix_block_key_record", "source_record_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200))
    # No foreign key (migration 0002): written by the MPI for the records it resolves, in
    # their transaction; a record's delete still takes its keys (a trigger).
    source_record_id: Mapped[int] = mapped_column(BigId)


class Encounter(Base):
    """A source Encounter and the golden patient it belongs to (null while waiting)."""

    __tablename__ = "encounter"
    __table_args__ = (
        Index("ix_encounter_golden", "golden_id", "period_start"),
        Index("ix_encounter_patient_ref", "source_id", "patient_resource_id"),
        # PostgreSQL: the identifier and type searches' containment (migration 0015).
        *(
            Index(
                f"ix_encounter_{element}",
                literal_column(f"(resource -> '{element}')").label(element),
                postgresql_using="gin",
                postgresql_ops={element: "jsonb_path_ops"},
            ).ddl_if(dialect="postgresql")
            for element in ("identifier", "type")
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # No foreign keys (migration 0002: one trigger query per inserted row each, and
    # nothing they could catch): the record is inserted with its encounter, the source
    # is the record's, and the golden id comes from the record's link. A record's
    # delete still takes its encounter (a trigger).
    source_record_id: Mapped[int] = mapped_column(BigId, unique=True)
    source_id: Mapped[int] = mapped_column(Integer)
    patient_resource_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    golden_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    status: Mapped[str | None] = mapped_column(String(30), nullable=True)
    class_code: Mapped[str | None] = mapped_column(String(30), nullable=True)
    period_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    period_end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resource: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SyncCursor(Base):
    """Where the next sync of (source, resource type) starts. Committed with the data."""

    __tablename__ = "sync_cursor"

    source_id: Mapped[int] = mapped_column(
        ForeignKey("source.id", ondelete="CASCADE"), primary_key=True
    )
    resource_type: Mapped[str] = mapped_column(String(40), primary_key=True)
    cursor: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class SyncRun(Base):
    """One run of one source: when, how far, and what went wrong."""

    __tablename__ = "sync_run"
    __table_args__ = (Index("ix_sync_run_source", "source_id", "started_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default="running")  # running|ok|failed
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    pages: Mapped[int] = mapped_column(Integer, default=0)
    resources: Mapped[int] = mapped_column(Integer, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Outbox(Base):
    """Change events, delivered at least once to webhooks and Subscriptions."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index(
            "ix_outbox_undelivered",
            "next_attempt_at",
            "id",
            sqlite_where=text("delivered_at IS NULL"),
            postgresql_where=text("delivered_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_type: Mapped[str] = mapped_column(String(40))  # patient.created, encounter.updated…
    aggregate_type: Mapped[str] = mapped_column(String(40))
    aggregate_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Consumer(Base):
    """A system that reads askonce: a CRM, a patient portal, a messaging service."""

    __tablename__ = "consumer"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # crm | portal | messaging | steward
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Subscription(Base):
    """A consumer's FHIR Subscription (R4B backport, rest-hook) or webhook."""

    __tablename__ = "subscription"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    consumer_id: Mapped[int] = mapped_column(
        ForeignKey("consumer.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(20), default="requested")
    topic: Mapped[str] = mapped_column(Text)
    filters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    channel_type: Mapped[str] = mapped_column(String(20), default="rest-hook")
    endpoint: Mapped[str] = mapped_column(Text)
    headers: Mapped[list[str]] = mapped_column(JSONType, default=list)
    payload_content: Mapped[str] = mapped_column(String(20), default="id-only")
    events_since_start: Mapped[int] = mapped_column(BigInteger, default=0)
    resource: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: A webhook's Standard Webhooks signing secret (``whsec_…``); None for FHIR channels.
    secret: Mapped[str | None] = mapped_column(String(100), nullable=True)
    #: Backport ``heartbeatPeriod``: send a heartbeat after this long without a notification.
    heartbeat_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: Backport ``maxCount``: events in one notification at most.
    max_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: The receiver acknowledged every event up to this number.
    delivered_through: Mapped[int] = mapped_column(BigInteger, default=0)
    #: Not before: a failed send's backoff, or a sender's lease. None is due now.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: Failed sends in a row.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SubscriptionEvent(Base):
    """A subscription's queue: its event number for an outbox event it matched.

    No foreign keys (see migration 0009: their checks cost most of the fan-out's writes);
    ``sync.delivery.delete_subscription`` deletes a subscription's rows with it."""

    __tablename__ = "subscription_event"

    subscription_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    event_number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    outbox_id: Mapped[int] = mapped_column(BigInteger)


class Audit(Base):
    """Append-only: who read or changed what, and when."""

    __tablename__ = "audit"
    __table_args__ = (
        Index("ix_audit_at", "at"),
        Index("ix_audit_principal", "principal", "at"),
        Index("ix_audit_entity", "resource_type", "resource_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    principal: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(30))  # read | search | create | update | …
    resource_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    resource_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    query: Mapped[str | None] = mapped_column(Text, nullable=True)
    outcome: Mapped[int | None] = mapped_column(Integer, nullable=True)  # HTTP status
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class ExportJob(Base):
    """A consumer's Bulk Data ``$export``: what it asked for, how far it got, its manifest.

    Only the client that kicked a job off sees it. ``owner`` and ``lease_until`` keep one
    worker on it at a time; a job whose lease ran out is taken over and resumes from
    ``position``, committed with each file."""

    __tablename__ = "export_job"
    __table_args__ = (Index("ix_export_job_client", "client_id", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    client_id: Mapped[str] = mapped_column(String(100))
    #: accepted | running | completed | failed
    status: Mapped[str] = mapped_column(String(20), default="accepted")
    #: The kick-off URL, as the manifest's ``request`` repeats it.
    request_url: Mapped[str] = mapped_column(Text)
    #: What to export: types, since, elements, patients (see gateway.operations.export).
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    transaction_time: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: Where the next file starts: the type's index and the last key written.
    position: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    owner: Mapped[str | None] = mapped_column(String(36), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The files are deleted after this (see sync.retention).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ExportFile(Base):
    """One NDJSON file of an export job: one resource type, up to a set number of lines."""

    __tablename__ = "export_file"
    __table_args__ = (Index("ix_export_file_job", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("export_job.id", ondelete="CASCADE"))
    #: output | deleted | error (the manifest's three lists)
    kind: Mapped[str] = mapped_column(String(10))
    resource_type: Mapped[str] = mapped_column(String(40))
    count: Mapped[int] = mapped_column(Integer)
    #: The NDJSON, gzip-compressed (level 1: ~9x smaller, ~250 MB/s): served as it is to a
    #: client that accepts gzip.
    content_gzip: Mapped[bytes] = mapped_column(LargeBinary)


class FormResponse(Base):
    """A completed form a patient portal submitted (``POST /fhir/QuestionnaireResponse``).

    The answers it gave became (or updated) a source record of the portal's source, whose
    values the patient confirmed (see :mod:`sync.forms`); the QuestionnaireResponse is
    kept as it came, for the record of what the patient said. Removing the source
    removes its forms."""

    __tablename__ = "form_response"
    __table_args__ = (Index("ix_form_response_golden", "golden_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id", ondelete="CASCADE"))
    source_record_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("source_record.id", ondelete="SET NULL"), nullable=True
    )
    #: The golden record the form was about when it arrived (the subject's survivor).
    golden_id: Mapped[str] = mapped_column(String(36))
    client_id: Mapped[str] = mapped_column(String(100))
    #: The canonical URL (``url|version``) of the form answered (a contained form's own).
    questionnaire: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: ``completed`` | ``amended``
    status: Mapped[str] = mapped_column(String(20))
    authored: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The QuestionnaireResponse, with the id and meta this server gave it.
    resource: Mapped[dict[str, Any]] = mapped_column(JSONType)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StoredQuestionnaire(Base):
    """A Questionnaire kept for the SDC operations (``PUT /fhir/Questionnaire/{id}``), so that
    a portal can name its form by canonical URL instead of sending it with each request."""

    __tablename__ = "questionnaire"
    __table_args__ = (Index("ix_questionnaire_url", "url", "version"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(20))
    #: The Questionnaire as stored, with its id and ``meta`` (versionId, lastUpdated).
    resource: Mapped[dict[str, Any]] = mapped_column(JSONType)
    version_id: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MatchModel(Base):
    """A trained matching model (plain JSON, versioned). One row is active."""

    __tablename__ = "match_model"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(40))
    params: Mapped[dict[str, Any]] = mapped_column(JSONType)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    trained_on: Mapped[int] = mapped_column(Integer, default=0)  # records seen
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


ALL_TABLES = [t.name for t in Base.metadata.sorted_tables]
