"""Source records: content hashing, lookup of what is already stored, quarantine.

A resource is identified by (source, resourceType, id). Its *content hash* is the
SHA-256 of a canonical JSON rendering of the resource without ``meta`` (servers
bump ``meta.versionId``/``meta.lastUpdated`` on no-op writes and on re-export), so
an unchanged resource is recognised, and skipped, with one indexed lookup.
See https://hl7.org/fhir/R4/resource.html#Meta for what ``meta`` carries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_mapping import InvalidResource, Issue
from store.bulk import chunks, one_of, rows_in
from store.models import SourceRecord
from store.types import stored_time

log = logging.getLogger(__name__)

#: ``error`` of a resource quarantined because its mapping failed (see :func:`mapping_error`).
MAPPING_FAILED = "mapping-failed"

#: ``source_record.status`` values.
STATUS_ACTIVE = "active"
STATUS_QUARANTINED = "quarantined"
STATUS_DELETED = "deleted"
#: An Encounter whose Patient has not arrived yet.
STATUS_PENDING = "pending"
#: Statuses under which an unchanged resource needs no work at all.
UNCHANGED_SKIPPABLE = frozenset({STATUS_ACTIVE, STATUS_QUARANTINED, STATUS_PENDING})

#: Columns of a new source record written at the driver level (:class:`store.bulk.BulkWriter`),
#: those of an update of a stored one (followed by its id), and the JSON ones.
RECORD_COLUMNS = (
    "source_id",
    "resource_type",
    "resource_id",
    "raw",
    "normalized",
    "content_hash",
    "version_id",
    "last_updated",
    "status",
    "updated_at",
    "received_at",
    "line_digest",
)
RECORD_UPDATE_COLUMNS = (*RECORD_COLUMNS[3:10], "error", "line_digest")
RECORD_JSON = frozenset({"raw", "normalized", "error"})

#: Ids of the ``IN (...)`` lookups are sent in chunks of this many (SQLite's
#: parameter limit is 32766; PostgreSQL's 65535).
LOOKUP_CHUNK = 2000
#: Prefix of the id given to a resource that arrived without one, so that it can
#: still be kept (quarantined) rather than dropped.
MISSING_ID_PREFIX = "missing-id-"
#: The quarantine reason of a resource whose text held an unpaired UTF-16 surrogate (it is
#: kept with U+FFFD in its place).
SURROGATE_ERROR = "text holds an unpaired UTF-16 surrogate (not valid Unicode)"
#: Longest resource id the table holds (FHIR ids are at most 64 characters).
MAX_RESOURCE_ID = 128


#: The canonical JSON rendering (sorted keys, no whitespace, UTF-8) of the standard
#: encoder, built once: a ``json.dumps`` call with these options builds a new encoder
#: every time. It renders what orjson refuses (see :func:`canonical_json`).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_ORJSON_SORTED = orjson.OPT_SORT_KEYS


def canonical_json(value: Any) -> str:
    """The canonical JSON text of ``value``: keys sorted by code point, no whitespace, UTF-8.

    orjson renders it 4x faster than the standard encoder (5,000 generated Patients on
    the shared bench machine: 32 -> 8 us each, the same text for all) and to the same
    text for strings, integers, booleans, null and most floats (both write the shortest
    repr that reads back the same float). What orjson refuses (an integer
    beyond 64 bits, a non-string key, a lone surrogate) goes to the standard encoder.
    Two renderings still differ, so a resource holding them hashes differently than
    before orjson (one re-sync re-processes it once, then it is skipped again): a float
    below 1e-4 (``1e-05`` vs ``0.00001``, ``2.5e-07`` vs ``2.5e-7``) and a NaN or
    infinity (``NaN`` is not JSON and ``jsonb`` refuses it; orjson writes ``null``).
    """
    try:
        return orjson.dumps(value, option=_ORJSON_SORTED).decode()
    except (orjson.JSONEncodeError, TypeError):
        return _CANONICAL.encode(value)


def canonical_body(resource: dict[str, Any]) -> str:
    """The canonical JSON of ``resource`` without ``meta`` (what the content hash covers)."""
    if "meta" in resource:
        resource = {k: v for k, v in resource.items() if k != "meta"}
    return canonical_json(resource)


def content_hash(resource: dict[str, Any]) -> str:
    """SHA-256 hex digest of ``resource`` without ``meta``, as canonical JSON."""
    return _digest(canonical_body(resource))


def _digest(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


#: Bytes of a line's digest (:func:`line_digest`): 128 bits, as hex in ``line_digest``.
LINE_DIGEST_BYTES = 16


def line_digest(line: bytes) -> str:
    """The digest of one NDJSON line's bytes (its line break and trailing blanks left
    out): equal for byte-identical lines only, whatever they hold."""
    return hashlib.blake2b(line.rstrip(), digest_size=LINE_DIGEST_BYTES).hexdigest()


def parse_instant(value: object) -> datetime | None:
    """A FHIR ``instant`` (``meta.lastUpdated``) as an aware datetime, or None if unusable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


@dataclass(slots=True)
class Incoming:
    """One resource of a page, with what the pipeline derived from it before parsing."""

    raw: dict[str, Any]
    resource_type: str
    resource_id: str
    content_hash: str
    version_id: str | None
    last_updated: datetime | None
    #: Why the resource cannot even be identified as the page's type, if so.
    shape_error: str | None = None
    #: :func:`canonical_body` of ``raw``, kept so that storing it costs no second rendering.
    canonical: str | None = None
    #: :func:`line_digest` of the NDJSON line ``raw`` was decoded from (stored with the
    #: record: see :func:`known_lines`), None for a resource from anywhere else.
    line_digest: str | None = None

    def raw_json(self) -> str:
        """JSON text of ``raw`` (for a JSON column): the canonical body with ``meta`` put back.

        Key order is not kept (PostgreSQL's ``jsonb`` does not keep it either); the
        decoded value equals ``raw``.
        """
        body = self.canonical if self.canonical is not None else canonical_body(self.raw)
        if "meta" not in self.raw:
            return body
        head = '{"meta":' + canonical_json(self.raw["meta"])
        return head + ("}" if body == "{}" else "," + body[1:])


def describe(raw: object, page_type: str, line: str | None = None) -> Incoming:
    """Identify a raw resource: its type, id, hash and version, without validating it.

    ``line`` is the :func:`line_digest` of the NDJSON line it was decoded from, if any."""
    if not isinstance(raw, dict):
        wrapped: dict[str, Any] = {"value": raw}
        digest = content_hash(wrapped)
        return Incoming(
            wrapped,
            page_type,
            MISSING_ID_PREFIX + digest[:40],
            digest,
            None,
            None,
            "not an object",
            line_digest=line,
        )
    canonical = canonical_body(raw)
    error: str | None = None
    try:
        digest = _digest(canonical)
    except UnicodeEncodeError:
        # A JSON "\ud800" escape parses to a lone surrogate: no Unicode text, and no
        # database stores it. The resource is kept with U+FFFD in its place, quarantined.
        raw = _without_lone_surrogates(raw)
        canonical = canonical_body(raw)
        digest = _digest(canonical)
        error = SURROGATE_ERROR
    rtype = raw.get("resourceType")
    rid = raw.get("id")
    if rtype != page_type:
        error = "resourceType is not " + page_type
    if not isinstance(rid, str) or not rid or len(rid) > MAX_RESOURCE_ID:
        error = error or "missing or invalid id"
        rid = MISSING_ID_PREFIX + digest[:40]
    meta_value = raw.get("meta")
    meta: dict[str, Any] = meta_value if isinstance(meta_value, dict) else {}
    version = meta.get("versionId") if isinstance(meta.get("versionId"), str) else None
    return Incoming(
        raw,
        page_type,
        rid,
        digest,
        version,
        parse_instant(meta.get("lastUpdated")),
        error,
        canonical,
        line,
    )


def _without_lone_surrogates(raw: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(raw, ensure_ascii=False)
    cleaned: dict[str, Any] = json.loads(
        text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    )
    return cleaned


def mapping_error(incoming: Incoming, exc: Exception) -> dict[str, Any]:
    """The quarantine error of a resource whose mapping failed unexpectedly (a defect, not
    invalid input): one such resource never stops its page, and it is kept, quarantined,
    for the next sync after a fix. Only the exception's type is kept: its message may
    quote patient data."""
    log.error(
        "mapping failed",
        extra={
            "resource_type": incoming.resource_type,
            "resource_id": incoming.resource_id,
            "reason": type(exc).__name__,
        },
    )
    reason = f"could not be mapped (internal error {type(exc).__name__})"
    issue = Issue(incoming.resource_type, reason, "exception")
    error = InvalidResource(incoming.resource_type, incoming.resource_id, [issue]).to_dict()
    error["error"] = MAPPING_FAILED
    return error


def load_records(
    session: Session, source_id: int, resource_type: str, resource_ids: Sequence[str]
) -> dict[str, SourceRecord]:
    """The stored source records among ``resource_ids``, keyed by resource id."""
    found: dict[str, SourceRecord] = {}
    for chunk in chunks(list(dict.fromkeys(resource_ids)), LOOKUP_CHUNK):
        rows = session.scalars(
            select(SourceRecord).where(
                SourceRecord.source_id == source_id,
                SourceRecord.resource_type == resource_type,
                one_of(session, SourceRecord.resource_id, chunk),
            )
        )
        for row in rows:
            found[row.resource_id] = row
    return found


@dataclass(slots=True)
class StoredRecord:
    """What the pipeline needs of a stored source record to decide about a new version."""

    id: int
    status: str
    content_hash: str | None
    #: ``last_updated`` as the driver returned it (see :attr:`last_updated`).
    stored_updated: Any

    @property
    def last_updated(self) -> datetime | None:
        """Converted when asked (:func:`store.types.stored_time`): only a record whose
        content changed is compared by time, and a re-sync's unchanged pages spent ~5% of
        their time converting timestamps nothing read."""
        return stored_time(self.stored_updated)


#: :func:`load_states`'s read, through :func:`store.bulk.rows_in`.
_STATES_SQL = (
    "SELECT resource_id, id, status, content_hash, last_updated FROM source_record"
    " WHERE resource_id {in} AND source_id = {p} AND resource_type = {p}"
)


def load_states(
    session: Session, source_id: int, resource_type: str, resource_ids: Sequence[str]
) -> dict[str, StoredRecord]:
    """:func:`load_records` without the ORM objects (and their decoded JSON columns): the
    id and change-detection columns of the stored records, keyed by resource id.

    Read at the driver level (:func:`store.bulk.rows_in`: plain tuples, one statement
    text whatever the number of ids), not through SQLAlchemy's result rows."""
    return {
        resource_id: StoredRecord(record_id, status, digest, updated)
        for resource_id, record_id, status, digest, updated in rows_of_source(
            session, _STATES_SQL, resource_ids, source_id, resource_type
        )
    }


def rows_of_source(
    session: Session, template: str, values: Sequence[str], source_id: int, resource_type: str
) -> list[tuple[Any, ...]]:
    """Rows of ``template`` (:func:`store.bulk.rows_in`: its ``{in}`` the distinct
    ``values``, its two ``{p}`` the source and the type), read at the driver level in the
    session's transaction after its pending changes are flushed."""
    distinct = list(dict.fromkeys(values))
    if not distinct:
        return []
    session.flush()
    postgresql = session.get_bind().dialect.name == "postgresql"
    dbapi = session.connection().connection.driver_connection
    return rows_in(dbapi, postgresql, template, distinct, source_id, resource_type)


def has_records(session: Session, source_id: int, resource_type: str) -> bool:
    """True when the source has a stored record of ``resource_type`` (one probe of its
    key index).

    A stream read while the source had none (its first sync) holds no line that a stored
    record came from, except lines it repeats itself: :func:`known_lines` is then only
    cost, and the caller leaves it out (a repeated line takes the decoding path, which
    skips it by its content hash all the same)."""
    found = session.scalar(
        select(SourceRecord.id)
        .where(SourceRecord.source_id == source_id, SourceRecord.resource_type == resource_type)
        .limit(1)
    )
    return found is not None


#: :func:`known_lines`' read. The source and type are compared as expressions (``+ 0``,
#: ``|| ''``) so that no planner picks their index over the digest's, which finds a
#: page's few rows wherever the statistics stand.
_KNOWN_LINES_SQL = (
    "SELECT line_digest, resource_id, status, content_hash, last_updated FROM source_record"
    " WHERE line_digest {in} AND source_id + 0 = {p} AND resource_type || '' = {p}"
)


@dataclass(frozen=True, slots=True)
class KnownLine:
    """A stored record an NDJSON line was last stored from (see :func:`known_lines`)."""

    resource_id: str
    content_hash: str
    #: ``last_updated`` as the driver returned it (:func:`store.types.stored_time`).
    stored_updated: Any

    def incoming(self, resource_type: str) -> Incoming:
        """The line as an :class:`Incoming` that stands for the stored record (no resource:
        what page-level de-duplication compares, and what :func:`is_unchanged` skips)."""
        return Incoming(
            {},
            resource_type,
            self.resource_id,
            self.content_hash,
            None,
            stored_time(self.stored_updated),
        )


def known_lines(
    session: Session, source_id: int, resource_type: str, digests: Sequence[str]
) -> dict[str, KnownLine]:
    """The lines among ``digests`` (:func:`line_digest`) that a stored record of the source
    was last stored from and that need no work: the record is active, quarantined or
    pending, so the line's resource would be skipped by :func:`is_unchanged` (same bytes,
    same content hash) and nothing needs to decode it."""
    return {
        digest: KnownLine(resource_id, hashed, updated)
        for digest, resource_id, status, hashed, updated in rows_of_source(
            session, _KNOWN_LINES_SQL, digests, source_id, resource_type
        )
        if status in UNCHANGED_SKIPPABLE and hashed
    }


class StoredState(Protocol):
    """What is compared to decide whether an incoming resource changed."""

    @property
    def status(self) -> str: ...
    @property
    def content_hash(self) -> str | None: ...
    @property
    def last_updated(self) -> datetime | None: ...


def is_unchanged(existing: StoredState | None, incoming: Incoming) -> bool:
    """True when ``incoming`` needs no work: same content, or older than what is stored.

    A deleted record comes back only with a version newer than the one it had when it was
    deleted (a resource created again): a version no newer (a push notification overtaken
    by the deletion, a stale copy of the same version) cannot undo the deletion. Without
    both ``lastUpdated`` values to compare, what comes back is stored."""
    if existing is None:
        return False
    if existing.status == STATUS_DELETED:
        deleted_at = existing.last_updated
        return (
            deleted_at is not None
            and incoming.last_updated is not None
            and incoming.last_updated <= deleted_at
        )
    if existing.status not in UNCHANGED_SKIPPABLE:
        return False
    if existing.content_hash == incoming.content_hash:
        return True  # (the stored time is converted only below: a re-sync skips most here)
    # Out-of-order delivery (a push notification overtaken by a sync): never let an
    # older version overwrite a newer one.
    return (
        existing.last_updated is not None
        and incoming.last_updated is not None
        and incoming.last_updated < existing.last_updated
    )


def quarantine(
    session: Session,
    source_id: int,
    incoming: Incoming,
    error: dict[str, Any],
    existing: SourceRecord | None,
) -> SourceRecord:
    """Keep an invalid resource as a quarantined source record, with its error."""
    record = existing
    if record is None:
        record = SourceRecord(
            source_id=source_id,
            resource_type=incoming.resource_type,
            resource_id=incoming.resource_id,
        )
        session.add(record)
    record.raw = incoming.raw
    # A mapping defect is not the resource's fault: no hash, so the next sync retries it.
    failed = error.get("error") == MAPPING_FAILED
    record.content_hash = "" if failed else incoming.content_hash
    record.line_digest = None if failed else incoming.line_digest
    record.version_id = incoming.version_id
    record.last_updated = incoming.last_updated
    record.status = STATUS_QUARANTINED
    record.error = error
    return record


def shape_error(incoming: Incoming) -> dict[str, Any]:
    """The quarantine error of a resource that could not be identified."""
    return {
        "resourceType": incoming.resource_type,
        "id": None,
        "issues": [{"path": incoming.resource_type, "reason": incoming.shape_error}],
    }
