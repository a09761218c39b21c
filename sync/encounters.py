"""Encounters of a page: validate, store in bulk, attach to the patient's golden record.

Encounters need no matching, so they are written with set-based statements (one
``INSERT … RETURNING`` per table and page; on PostgreSQL one statement writes a few
hundred new records, their encounters and events, while the next few hundred are
validated) rather than object by object. An
Encounter whose ``subject`` Patient has not arrived from its source yet is stored
with ``golden_id`` NULL and status ``pending``; :func:`attach_waiting` attaches it
when the Patient is resolved, so nothing is lost to arrival order.
https://hl7.org/fhir/R4/encounter.html
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import ColumnElement, TextClause, insert, select, text, update
from sqlalchemy.orm import Session

from fhir_mapping import EncounterCore, InvalidResource, parse_encounter_core, subject_patient_id
from store.background import Background
from store.bulk import OUTBOX_COLUMNS, OUTBOX_JSON, BulkWriter, array_sql, chunks, one_of
from store.db import write_time
from store.events import ENCOUNTER_CREATED as EVENT_CREATED
from store.events import ENCOUNTER_UPDATED as EVENT_UPDATED
from store.events import outbox_row, outbox_values
from store.jsontext import json_text
from store.models import Base, Encounter, SourceRecord
from sync.patients import replaced_by
from sync.records import (
    LOOKUP_CHUNK,
    RECORD_COLUMNS,
    RECORD_JSON,
    RECORD_UPDATE_COLUMNS,
    STATUS_ACTIVE,
    STATUS_DELETED,
    STATUS_PENDING,
    Incoming,
    StoredRecord,
    is_unchanged,
    mapping_error,
    quarantine,
    rows_of_source,
    shape_error,
)

#: Columns of the page's bulk statements (see :class:`_PageWriter`), and their JSON ones.
_ENCOUNTER_COLUMNS = (
    "source_record_id",
    "source_id",
    "patient_resource_id",
    "golden_id",
    "status",
    "class_code",
    "period_start",
    "period_end",
    "resource",
    "last_updated",
)
_ENCOUNTER_JSON = frozenset({"resource"})
_OUTBOX_TABLE = Base.metadata.tables["outbox"]
#: FHIR ``date``/``dateTime`` precisions by string length: year, year-month, date.
_PARTIAL_DATE_FORMATS = {4: "%Y", 7: "%Y-%m", 10: "%Y-%m-%d"}
#: Encoded timestamps per dialect (is PostgreSQL) by FHIR text or datetime: period bounds
#: and ``meta.lastUpdated`` repeat across a load. Each holds None (no timestamp), so that
#: :meth:`_PageWriter.add` finds every value by one lookup; cleared as a whole when full.
_TIMESTAMPS: dict[bool, dict[Any, Any]] = {False: {None: None}, True: {None: None}}
MAX_CACHED_TIMESTAMPS = 16384
#: Not in a dict of :data:`_TIMESTAMPS`.
_MISSING = object()
#: PostgreSQL: new Encounters per statement of a page (see :mod:`store.background`). The
#: first three statements of a 1000-row page run while the next rows are validated. Measured on
#: the Encounter pages of a 25k-Patient load (78k Encounters), idle machine (load ~1.1):
#: 5.69 s with one statement a page, all 2.13-2.15 s of it waited for; 4.59-4.76 s with
#: four, 2.26-2.37 s of statements of which 1.07-1.14 s were waited for. The overlap needs
#: a free core: under a load of 5-8 on this 2-core machine both took as long.
#: The server is the slower side of a page: a 250-row statement costs 8-11 ms of server
#: CPU (0.65 ms of it per statement, the rest ~33-40 us per row; the backend's
#: ``/proc/<pid>/stat``), its validation here ~4 ms. Measured and left out (Encounter
#: pages of a 25k-Patient load, the two settings on alternate pages of one run, 40 pages
#: each, load 4-6): a first statement of 64 rows, and sending as soon as the previous
#: statement finished (50 rows at least), were 2-5% slower per page, not faster; a
#: 0.5 ms switch interval changed nothing (psycopg waits without the GIL; the page waits
#: for the server, not for the GIL).
#: SQLite writes its new Encounters in line, by ``executemany``. Tried and left out: the
#: same overlap on SQLite, each 250 rows sent as one JSON array through three
#: ``INSERT … SELECT … FROM json_each(?)`` (records, encounters copying the record's
#: ``raw``, events), as the block keys go (:func:`mpi.resolve._send_block_keys`). An
#: Encounter row has 14 values, and SQLite 3.40 parses the row's JSON once per
#: ``json_extract``: it keeps no parse of a value that changes from row to row. That made
#: 42-49 us of C per row against 27 us for the three ``executemany`` with their Python.
#: The thread fell behind the validation it was to overlap. Over three interleaved 25k
#: runs, Encounters fell from 7.7-8.3k to 6.5-6.7k/s and peak RSS rose by 30-48 MB.
#: Passing one JSON array per column is worse: a bound parameter's parse is not kept
#: either, so every value re-parses its whole column.
PG_NEW_ROWS_PER_STATEMENT = 250


def _timestamp(bulk: BulkWriter, value: str | datetime | None) -> Any:
    """``bulk.timestamp`` of a FHIR dateTime text (see :func:`parse_fhir_datetime`) or of a
    datetime, memoized."""
    stamps = _TIMESTAMPS[bulk.postgresql]
    found = stamps.get(value, _MISSING)
    if found is not _MISSING:
        return found
    parsed = value if isinstance(value, datetime) else parse_fhir_datetime(value)
    encoded = bulk.timestamp(parsed)
    if len(stamps) >= MAX_CACHED_TIMESTAMPS:
        stamps.clear()
        stamps[None] = None
    stamps[value] = encoded
    return encoded


def _among(
    session: Session, column: Any, values: Sequence[Any]
) -> ColumnElement[bool] | TextClause:
    """``column IN (values)``. On SQLite the values travel as one JSON array read by
    ``json_each``: a constant statement (compiled once, no thousand placeholders rendered
    per page); elsewhere :func:`store.bulk.one_of`."""
    if session.get_bind().dialect.name != "sqlite":
        return one_of(session, column, values)
    return text(
        f"{column.table.name}.{column.name} IN (SELECT value FROM json_each(:among_values))"
    ).bindparams(among_values=json_text(list(values)))


def _subject_of(raw: Any) -> str | None:
    """The Patient id :func:`parse_encounter_core` will find in ``raw`` (None for a resource
    too malformed to have one, which validation then rejects)."""
    try:
        return subject_patient_id(raw.get("subject"))
    except (AttributeError, TypeError):
        return None


@dataclass
class EncounterOutcome:
    stored: int = 0
    skipped: int = 0
    quarantined: int = 0
    waiting: int = 0


@dataclass(slots=True)
class _Stored(StoredRecord):
    """A stored Encounter record, with the id of its encounter row (filled in later by
    :func:`_load_encounter_ids`)."""

    encounter_id: int | None


def parse_fhir_datetime(value: str | None) -> datetime | None:
    """A FHIR ``dateTime`` (any precision) as an aware datetime; partial dates start the period."""
    if not value:
        return None
    fmt = _PARTIAL_DATE_FORMATS.get(len(value))
    try:
        if fmt is not None:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


#: A page's stored records by key, through :func:`sync.records.rows_of_source` (both
#: dialects; every PostgreSQL connection plans it with the page's id array, not with a
#: generic plan, :data:`store.db.PG_OPTIONS`: one made from statistics taken before a
#: source's first Encounters scanned every record of the source per page).
_STORED_RECORDS = (
    "SELECT id, resource_id, status, content_hash, last_updated FROM source_record"
    " WHERE resource_id {in} AND source_id = {p} AND resource_type = {p}"
)


def _load_stored(
    session: Session, source_id: int, resource_ids: Sequence[str]
) -> dict[str, _Stored]:
    """The stored records among ``resource_ids`` (their encounter ids come later, from
    :func:`_load_encounter_ids`, for the few that changed: an outer join to ``encounter``
    here let PostgreSQL hash the whole table for every page of a re-sync).

    Read at the driver level (plain tuples): SQLAlchemy's result rows and their timestamp
    processing were most of a re-synced page's cost."""
    return {
        rid: _Stored(rec_id, status, digest, updated, None)
        for rec_id, rid, status, digest, updated in rows_of_source(
            session, _STORED_RECORDS, resource_ids, source_id, "Encounter"
        )
    }


def _load_encounter_ids(session: Session, stored: Sequence[_Stored]) -> None:
    """Fill in the encounter id of each stored record that has an encounter row."""
    by_record = {s.id: s for s in stored}
    for chunk in chunks(list(by_record), LOOKUP_CHUNK):
        for enc_id, record_id in session.execute(
            select(Encounter.id, Encounter.source_record_id).where(
                _among(session, Encounter.source_record_id, chunk)
            )
        ):
            by_record[record_id].encounter_id = enc_id


#: The linked active Patients' golden ids, through :func:`sync.records.rows_of_source`.
_PG_GOLDEN_IDS = (
    "SELECT record.resource_id, link.golden_id FROM source_record AS record"
    " JOIN link ON link.source_record_id = record.id"
    " WHERE record.resource_id {in} AND record.source_id = {p} AND record.resource_type = {p}"
    f" AND record.status = '{STATUS_ACTIVE}'"
)
#: SQLite: the ids are looked up in the (source, type, id) key, and the status in the
#: status index by rowid (the ``EXISTS``): both covering, so no record row is read (its
#: ``status`` sits behind the resource JSON, often in overflow pages), and no scan of
#: every active Patient of the source per page.
_SQLITE_GOLDEN_IDS = (
    "SELECT source_record.resource_id, link.golden_id FROM source_record"
    " JOIN link ON link.source_record_id = source_record.id"
    " WHERE source_record.resource_id {in} AND source_record.source_id = {p}"
    " AND source_record.resource_type = {p}"
    " AND EXISTS (SELECT 1 FROM source_record AS active_record"
    " INDEXED BY ix_source_record_status"
    " WHERE active_record.source_id = source_record.source_id"
    " AND active_record.resource_type = source_record.resource_type"
    f" AND active_record.status = '{STATUS_ACTIVE}'"
    " AND active_record.id = source_record.id)"
)


#: Links of ``replaced-by`` a subject is followed through, at most (a merge of a merge...).
MAX_REPLACEMENTS = 5


def replacements(session: Session, source_id: int, patient_ids: Sequence[str]) -> dict[str, str]:
    """Patient id -> the id of the Patient its source replaced it with, for the retired
    ones among ``patient_ids`` (a deleted record whose last version has a ``replaced-by``
    link: :func:`sync.pipeline.retire_replaced`), followed to the last survivor."""
    direct: dict[str, str] = {}
    frontier = list(dict.fromkeys(patient_ids))
    for _hop in range(MAX_REPLACEMENTS):
        if not frontier:
            break
        found: dict[str, str] = {}
        for chunk in chunks(frontier, LOOKUP_CHUNK):
            rows = session.execute(
                select(SourceRecord.resource_id, SourceRecord.raw).where(
                    SourceRecord.source_id == source_id,
                    SourceRecord.resource_type == "Patient",
                    SourceRecord.resource_id.in_(chunk),
                    SourceRecord.status == STATUS_DELETED,
                )
            )
            for resource_id, raw in rows:
                survivor = replaced_by(raw) if isinstance(raw, dict) else None
                if survivor is not None:
                    found[resource_id] = survivor
        direct.update(found)
        frontier = [s for s in found.values() if s not in direct]
    out: dict[str, str] = {}
    for patient_id in patient_ids:
        target, hops = patient_id, 0
        while target in direct and hops < MAX_REPLACEMENTS:
            target, hops = direct[target], hops + 1
        if target != patient_id:
            out[patient_id] = target
    return out


def _look_up_subjects(
    session: Session,
    source_id: int,
    patient_ids: Sequence[str],
    golden: dict[str, str],
    survivors: dict[str, str],
) -> None:
    """Add the golden ids of ``patient_ids`` to ``golden``; for a subject the source merged
    into another Patient, its survivor to ``survivors`` (the Encounter is the survivor's)
    and the survivor's golden id to ``golden``."""
    golden.update(golden_ids_of_patients(session, source_id, patient_ids))
    retired = replacements(session, source_id, [p for p in patient_ids if p not in golden])
    if retired:
        survivors.update(retired)
        golden.update(golden_ids_of_patients(session, source_id, list(retired.values())))


def golden_ids_of_patients(
    session: Session, source_id: int, patient_ids: Sequence[str]
) -> dict[str, str]:
    """Source Patient resource id -> golden id, for the linked active Patients among them.

    Read at the driver level (plain tuples: on SQLite the ORM's select of the same two
    columns took 4.6 us an Encounter, this 3.3)."""
    postgresql = session.get_bind().dialect.name == "postgresql"
    template = _PG_GOLDEN_IDS if postgresql else _SQLITE_GOLDEN_IDS
    return dict(rows_of_source(session, template, patient_ids, source_id, "Patient"))


def _normalized(encounter: EncounterCore) -> dict[str, Any]:
    """The searchable core of an EncounterCore (``dataclasses.asdict`` costs more than
    validation at bulk rates; the full resource is kept in ``raw`` and ``encounter.resource``)."""
    period = encounter.period
    coding = encounter.class_code
    return {
        "resource_id": encounter.resource_id,
        "version_id": encounter.version_id,
        "last_updated": encounter.last_updated,
        "patient_id": encounter.patient_id,
        "status": encounter.status,
        "class_code": {"system": coding.system, "code": coding.code} if coding else None,
        "period": {"start": period.start, "end": period.end} if period else None,
    }


class _PageWriter:
    """The rows one page of Encounters writes, encoded once and sent in one statement each."""

    def __init__(self, session: Session, source_id: int) -> None:
        self.bulk = BulkWriter(session)
        self.source_id = source_id
        self.now = self.bulk.timestamp(write_time(session))
        self.new_records: list[tuple[Any, ...]] = []
        self.record_updates: list[tuple[Any, ...]] = []
        #: Resource id -> encounter columns after ``source_record_id`` (new encounter rows).
        self.new_encounters: dict[str, tuple[Any, ...]] = {}
        #: Resource id -> source record id, for new encounters of records already stored.
        self.record_ids: dict[str, int] = {}
        self.encounter_updates: list[tuple[Any, ...]] = []
        self.events: list[tuple[Any, ...]] = []
        #: PostgreSQL: the page's new Encounters go out by :data:`PG_NEW_ROWS_PER_STATEMENT`.
        self.background = Background("encounter-page-write")

    def add(
        self,
        item: Incoming,
        encounter: EncounterCore,
        current: _Stored | None,
        golden_id: str | None,
        status: str,
        patient_id: str | None,
    ) -> None:
        """``patient_id``: the Patient the row is attached through (the subject, or the
        Patient its source replaced the subject with)."""
        bulk = self.bulk
        # The timestamps by one lookup each where they were encoded before (most are).
        stamps = _TIMESTAMPS[bulk.postgresql]
        last_updated = stamps.get(item.last_updated, _MISSING)
        if last_updated is _MISSING:
            last_updated = _timestamp(bulk, item.last_updated)
        period = encounter.period
        start = end = None
        if period is not None:
            start = stamps.get(period.start, _MISSING)
            if start is _MISSING:
                start = _timestamp(bulk, period.start)
            end = stamps.get(period.end, _MISSING)
            if end is _MISSING:
                end = _timestamp(bulk, period.end)
        raw_json = item.raw_json()
        record = (
            raw_json,
            json_text(_normalized(encounter)),
            item.content_hash,
            item.version_id,
            last_updated,
            status,
            self.now,
        )
        coding = encounter.class_code
        values = (
            self.source_id,
            patient_id,
            golden_id,
            encounter.status,
            coding.code if coding else None,
            start,
            end,
            raw_json,
            self.now,
        )
        if current is None:
            self.new_records.append(
                (self.source_id, "Encounter", item.resource_id, *record, self.now, item.line_digest)
            )
            self.new_encounters[item.resource_id] = values
            if bulk.postgresql and len(self.new_records) >= PG_NEW_ROWS_PER_STATEMENT:
                self.send_new()
            return
        self.record_updates.append((*record, None, item.line_digest, current.id))
        if current.encounter_id is None:
            self.new_encounters[item.resource_id] = values
            self.record_ids[item.resource_id] = current.id
            return
        self.encounter_updates.append((*values[1:], current.encounter_id))
        self.event(EVENT_UPDATED, current.encounter_id, golden_id, item.resource_id)

    def event(
        self, event_type: str, encounter_id: int, golden_id: str | None, resource_id: str
    ) -> None:
        self.events.append(
            outbox_values(
                event_type,
                encounter_id,
                self.now,
                golden_id=golden_id,
                source_id=self.source_id,
                resource_id=resource_id,
            )
        )

    def send_new(self) -> None:
        """PostgreSQL: start the statement writing the new Encounters added so far
        (:func:`_insert_new_pg`), run by :attr:`background`."""
        records, self.new_records = self.new_records, []
        encounters = {row[2]: self.new_encounters.pop(row[2]) for row in records}
        statement, parameters = _insert_new_pg(self.source_id, self.now, records, encounters)
        connection = self.bulk.connection

        def execute() -> None:
            connection.exec_driver_sql(statement, parameters)

        self.background.run(execute)

    def send_all_new(self) -> None:
        """PostgreSQL: write the page's remaining new Encounters and wait for the writes."""
        if self.bulk.postgresql and self.new_records:
            self.send_new()
        self.background.wait()

    def write(self, session: Session) -> None:
        """Insert and update the page's rows, then write an event per new Encounter.

        Plain executemany; on PostgreSQL the new resources went out already
        (:meth:`send_all_new`) and the other new ids come back from ``RETURNING``; on
        SQLite from :func:`_sqlite_inserted_ids` (else one indexed read of the new rows).
        """
        bulk = self.bulk
        self.send_all_new()
        returned = bulk.insert(
            "source_record",
            RECORD_COLUMNS,
            self.new_records,
            json_columns=RECORD_JSON,
            returning=("id", "resource_id"),
        )
        if returned is None:
            keys = [(self.source_id, "Encounter", row[2]) for row in self.new_records]
            returned = _sqlite_inserted_ids(bulk, "source_record", _RECORD_KEY, keys)
        if returned is None:
            returned = []
            for chunk in chunks([row[2] for row in self.new_records], LOOKUP_CHUNK):
                returned.extend(
                    session.execute(
                        select(SourceRecord.id, SourceRecord.resource_id).where(
                            SourceRecord.source_id == self.source_id,
                            SourceRecord.resource_type == "Encounter",
                            _among(session, SourceRecord.resource_id, chunk),
                        )
                    )
                )
        self.record_ids.update((resource_id, record_id) for record_id, resource_id in returned)
        bulk.update_by_id(
            "source_record",
            RECORD_UPDATE_COLUMNS,
            self.record_updates,
            json_columns=RECORD_JSON,
        )
        bulk.update_by_id(
            "encounter",
            _ENCOUNTER_COLUMNS[2:],
            self.encounter_updates,
            json_columns=_ENCOUNTER_JSON,
        )
        if self.new_encounters:
            rows = [(self.record_ids[rid], *values) for rid, values in self.new_encounters.items()]
            rid_by_record = {
                row[0]: rid for row, rid in zip(rows, self.new_encounters, strict=True)
            }
            inserted: list[tuple[Any, ...]] | None
            if bulk.postgresql:
                inserted = _insert_encounters_copying_raw(bulk, rows)
            else:
                inserted = bulk.insert(
                    "encounter", _ENCOUNTER_COLUMNS, rows, json_columns=_ENCOUNTER_JSON
                )
            if inserted is None:
                ids = _sqlite_inserted_ids(
                    bulk, "encounter", ("source_record_id",), [(row[0],) for row in rows]
                )
                if ids is not None:
                    # _ENCOUNTER_COLUMNS: source_record_id, source_id, patient id, golden_id…
                    inserted = [
                        (enc_id, row[3], row[0]) for (enc_id, _), row in zip(ids, rows, strict=True)
                    ]
            if inserted is None:
                inserted = []
                for chunk in chunks(list(rid_by_record), LOOKUP_CHUNK):
                    inserted.extend(
                        session.execute(
                            select(
                                Encounter.id, Encounter.golden_id, Encounter.source_record_id
                            ).where(_among(session, Encounter.source_record_id, chunk))
                        )
                    )
            for enc_id, golden_id, record_id in inserted:
                self.event(EVENT_CREATED, enc_id, golden_id, rid_by_record[record_id])
        bulk.insert("outbox", OUTBOX_COLUMNS, self.events, json_columns=OUTBOX_JSON)


#: PostgreSQL: a page's new Encounters, their source records and their events in one
#: statement (see :func:`_insert_new_pg`). ``c`` holds the page's constants, ``u`` one
#: row per resource; the two data-modifying CTEs run once each, and the events are built
#: from what the encounter insert returns.
_PG_INSERT_NEW = (
    "WITH c AS (SELECT CAST(%b AS INTEGER) AS source_id, CAST(%b AS TIMESTAMPTZ) AS now),"
    " u AS (SELECT * FROM unnest({arrays}) AS u(resource_id, raw, normalized, content_hash,"
    " version_id, last_updated, status, line_digest, patient_id, golden_id, encounter_status,"
    " class_code, period_start, period_end)),"
    " record AS (INSERT INTO source_record (source_id, resource_type, resource_id, raw,"
    " normalized, content_hash, version_id, last_updated, status, updated_at, received_at,"
    " line_digest)"
    " SELECT c.source_id, 'Encounter', u.resource_id, CAST(u.raw AS JSONB),"
    " CAST(u.normalized AS JSONB), u.content_hash, u.version_id, u.last_updated, u.status,"
    " c.now, c.now, u.line_digest FROM u CROSS JOIN c RETURNING id, resource_id, raw),"
    " encounter AS (INSERT INTO encounter (source_record_id, source_id, patient_resource_id,"
    " golden_id, status, class_code, period_start, period_end, last_updated, resource)"
    " SELECT record.id, c.source_id, u.patient_id, u.golden_id, u.encounter_status,"
    " u.class_code, u.period_start, u.period_end, c.now, record.raw"
    " FROM record JOIN u ON u.resource_id = record.resource_id CROSS JOIN c"
    " RETURNING id, golden_id, source_record_id)"
    " INSERT INTO outbox (event_type, aggregate_type, aggregate_id, payload, created_at,"
    " next_attempt_at, attempts)"
    f" SELECT '{EVENT_CREATED}', 'Encounter', CAST(encounter.id AS TEXT),"
    " jsonb_build_object('encounter_id', encounter.id, 'golden_id', encounter.golden_id,"
    " 'source_id', c.source_id, 'resource_id', record.resource_id), c.now, c.now, 0"
    " FROM encounter JOIN record ON record.id = encounter.source_record_id CROSS JOIN c"
)
#: Element types of the arrays of ``u`` in :data:`_PG_INSERT_NEW`.
_PG_NEW_TYPES = (
    "VARCHAR(128)",
    "TEXT",
    "TEXT",
    "VARCHAR(64)",
    "VARCHAR(64)",
    "TIMESTAMPTZ",
    "VARCHAR(20)",
    "VARCHAR(32)",
    "VARCHAR(128)",
    "VARCHAR(36)",
    "VARCHAR(30)",
    "VARCHAR(30)",
    "TIMESTAMPTZ",
    "TIMESTAMPTZ",
)
#: Positions in a new record's row (:data:`sync.records.RECORD_COLUMNS`) of the values
#: :data:`_PG_INSERT_NEW` takes per resource, and in a new encounter's values (the
#: encounter columns after ``source_record_id``) of the patient id … period end.
_RECORD_SENT = tuple(
    RECORD_COLUMNS.index(column)
    for column in (
        "resource_id",
        "raw",
        "normalized",
        "content_hash",
        "version_id",
        "last_updated",
        "status",
        "line_digest",
    )
)
_ENCOUNTER_VALUES_SENT = tuple(
    _ENCOUNTER_COLUMNS.index(column) - 1
    for column in (
        "patient_resource_id",
        "golden_id",
        "status",
        "class_code",
        "period_start",
        "period_end",
    )
)


_PICK_RECORD = itemgetter(*_RECORD_SENT)
_PICK_ENCOUNTER = itemgetter(*_ENCOUNTER_VALUES_SENT)


def _insert_new_pg(
    source_id: int,
    now: Any,
    records: Sequence[tuple[Any, ...]],
    encounters: Mapping[str, tuple[Any, ...]],
) -> tuple[str, tuple[Any, ...]]:
    """PostgreSQL: the statement (and its parameters) inserting new source records, an
    encounter row for each and an ``encounter.created`` event per encounter
    (:data:`_PG_INSERT_NEW`).

    Three statements did it before, with the record ids and the encounter ids coming back
    to Python in between: the encounter read its record's ``raw`` back by a probe of the
    primary key, and the events' payloads were JSON-encoded here and sent back as a third
    set of arrays. Now the resource JSON crosses the wire once and is parsed into jsonb
    once (the encounter takes the record's ``raw`` from the insert's ``RETURNING``), and
    the payloads are built by ``jsonb_build_object`` (the same JSON value). Text arrays
    travel as joined strings (:func:`store.bulk.array_sql`)."""
    rows = [_PICK_RECORD(row) + _PICK_ENCOUNTER(encounters[row[2]]) for row in records]
    sent = [
        array_sql(sql_type, list(values))
        for sql_type, values in zip(_PG_NEW_TYPES, zip(*rows, strict=True), strict=True)
    ]
    statement = _PG_INSERT_NEW.replace("{arrays}", ", ".join(sql for sql, _ in sent))
    return statement, (source_id, now, *(value for _, value in sent))


#: The encounter columns sent by :func:`_insert_encounters_copying_raw` (all but ``resource``).
_ENCOUNTER_SENT = tuple(column for column in _ENCOUNTER_COLUMNS if column != "resource")
_RESOURCE_INDEX = _ENCOUNTER_COLUMNS.index("resource")


def _insert_encounters_copying_raw(
    bulk: BulkWriter, rows: Sequence[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """PostgreSQL: insert new encounter rows (in :data:`_ENCOUNTER_COLUMNS` order) with
    ``resource`` copied from their source record's ``raw``, written just before from the
    same text: the resource JSON crosses the wire and is parsed into jsonb once, not
    twice. Each row's record is one probe of the primary key (the ``LIMIT 1`` keeps the
    lateral subquery a nested loop: as a plain join, with the page's 1000 rows in view,
    PostgreSQL hashed a sequential scan of the whole ``source_record`` table per page).
    Returns (id, golden_id, source_record_id) per row."""
    sent = [row[:_RESOURCE_INDEX] + row[_RESOURCE_INDEX + 1 :] for row in rows]
    arrays = bulk._arrays(_ENCOUNTER_SENT, sent)
    single = bulk._single_valued(arrays)
    unnest, selected, parameters = bulk._unnest("encounter", _ENCOUNTER_SENT, (), single, arrays)
    statement = (
        f"INSERT INTO encounter ({', '.join(_ENCOUNTER_SENT)}, resource)"
        f" SELECT {selected}, record.raw {unnest}"
        " CROSS JOIN LATERAL (SELECT raw FROM source_record WHERE source_record.id = u.c0"
        " LIMIT 1) AS record"
        " RETURNING id, golden_id, source_record_id"
    )
    result = bulk.connection.exec_driver_sql(statement, parameters)
    inserted = [tuple(row) for row in result]
    if len(inserted) != len(rows):
        raise RuntimeError("an encounter's source record was not found")
    return inserted


#: The columns that identify a source record (its unique key).
_RECORD_KEY = ("source_id", "resource_type", "resource_id")
#: Above this rowid SQLite may pick new rowids at random instead of max + 1.
_SQLITE_SEQUENTIAL_ROWIDS = 2**62


def _sqlite_inserted_ids(
    bulk: BulkWriter, table: str, key_columns: Sequence[str], keys: Sequence[tuple[Any, ...]]
) -> list[tuple[int, Any]] | None:
    """(id, last key value) of the rows the last ``executemany`` inserted into ``table``,
    in insertion order, without reading them back; None when that cannot be vouched for.

    SQLite gives a new row the largest rowid plus one, and this transaction holds the
    database's only write lock, so a bulk insert's rows have consecutive ids ending at
    ``last_insert_rowid()``. The first and the last of them are read back by id to
    confirm (their key columns must be the first and last ``keys``)."""
    if not keys:
        return []
    connection = bulk.connection
    last = connection.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
    first = last - len(keys) + 1
    if first < 1 or last >= _SQLITE_SEQUENTIAL_ROWIDS:
        return None
    found = {
        row[0]: tuple(row[1:])
        for row in connection.exec_driver_sql(
            f"SELECT id, {', '.join(key_columns)} FROM {table} WHERE id IN (?, ?)", (first, last)
        )
    }
    if found.get(first) != tuple(keys[0]) or found.get(last) != tuple(keys[-1]):
        return None
    return [(first + i, key[-1]) for i, key in enumerate(keys)]


def ingest_encounters(
    session: Session, source_id: int, incoming: Sequence[Incoming]
) -> EncounterOutcome:
    """Store the Encounters of one page and attach each to its golden patient (no commit).

    Set-based: one lookup of the stored records, one of the patients' golden ids (their
    ids read from the resources before validation), and one statement per table for the
    page's rows (see :class:`_PageWriter`). On PostgreSQL the new Encounters go out by
    :data:`PG_NEW_ROWS_PER_STATEMENT` while the next ones are validated; quarantined
    records are written after them.
    """
    outcome = EncounterOutcome()
    stored = _load_stored(session, source_id, [i.resource_id for i in incoming])
    changed: list[tuple[Incoming, _Stored | None]] = []
    for item in incoming:
        current = stored.get(item.resource_id)
        if is_unchanged(current, item):
            outcome.skipped += 1
        else:
            changed.append((item, current))
    if not changed:
        return outcome
    _load_encounter_ids(session, [current for _, current in changed if current is not None])
    # Looked up before validation, so that no lookup waits for a write (store.background).
    patients = [
        patient_id
        for item, _ in changed
        if item.shape_error is None and (patient_id := _subject_of(item.raw)) is not None
    ]
    golden: dict[str, str] = {}
    survivors: dict[str, str] = {}
    _look_up_subjects(session, source_id, patients, golden, survivors)
    asked = set(patients)
    writer = _PageWriter(session, source_id)
    invalid: list[tuple[Incoming, _Stored | None, dict[str, Any]]] = []
    try:
        for item, current in changed:
            if item.shape_error is not None:
                invalid.append((item, current, shape_error(item)))
                continue
            try:
                encounter = parse_encounter_core(item.raw)
            except InvalidResource as exc:
                invalid.append((item, current, exc.to_dict()))
                continue
            except Exception as exc:  # a mapping defect must not stop the page
                invalid.append((item, current, mapping_error(item, exc)))
                continue
            patient_id = encounter.patient_id
            if patient_id is not None and patient_id not in asked:
                writer.background.wait()
                _look_up_subjects(session, source_id, [patient_id], golden, survivors)
                asked.add(patient_id)
            patient_id = survivors.get(patient_id, patient_id) if patient_id else None
            golden_id = golden.get(patient_id) if patient_id else None
            waiting = patient_id is not None and golden_id is None
            outcome.waiting += waiting
            status = STATUS_PENDING if waiting else STATUS_ACTIVE
            writer.add(item, encounter, current, golden_id, status, patient_id)
            outcome.stored += 1
        writer.send_all_new()
    except BaseException:
        writer.background.abandon()
        raise
    for item, current, error in invalid:
        existing = session.get(SourceRecord, current.id) if current else None
        # A stored Encounter stays as last received valid; the record says why it is not newer.
        quarantine(session, source_id, item, error, existing)
        outcome.quarantined += 1
    # Quarantined records go out before the driver-level statements below.
    session.flush()
    writer.write(session)
    return outcome


def attach_waiting(session: Session, source_id: int, golden_by_patient: Mapping[str, str]) -> int:
    """Attach this source's Encounters of the given Patients to their (new) golden records.

    Covers Encounters that arrived before their Patient and Encounters whose Patient
    was re-linked to another golden record. Returns how many Encounters changed.
    """
    if not golden_by_patient:
        return 0
    changes: list[tuple[int, int, str, str]] = []
    for chunk in chunks(list(golden_by_patient), LOOKUP_CHUNK):
        rows = session.execute(
            select(
                Encounter.id,
                Encounter.source_record_id,
                Encounter.patient_resource_id,
                Encounter.golden_id,
                SourceRecord.resource_id,
                SourceRecord.status,
            )
            .join(SourceRecord, SourceRecord.id == Encounter.source_record_id)
            .where(Encounter.source_id == source_id, Encounter.patient_resource_id.in_(chunk))
        )
        for enc_id, record_id, patient_id, current, resource_id, status in rows:
            target = golden_by_patient[patient_id or ""]
            # The MPI may already have repointed it (mpi.repoint_encounters); a pending
            # record still needs its status and its event.
            if current != target or status == STATUS_PENDING:
                changes.append((enc_id, record_id, target, resource_id))
    if not changes:
        return 0
    now = write_time(session)
    # A new subject is a change of the Encounter: its lastUpdated moves (``_since``).
    session.execute(
        update(Encounter),
        [{"id": enc_id, "golden_id": g, "last_updated": now} for enc_id, _, g, _ in changes],
    )
    record_ids = [record_id for _, record_id, _, _ in changes]
    for id_chunk in chunks(record_ids, LOOKUP_CHUNK):
        session.execute(
            update(SourceRecord)
            .where(SourceRecord.id.in_(id_chunk), SourceRecord.status == STATUS_PENDING)
            .values(status=STATUS_ACTIVE, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    session.execute(
        insert(_OUTBOX_TABLE),
        [
            outbox_row(
                EVENT_UPDATED, enc_id, now=now, golden_id=g, source_id=source_id, resource_id=rid
            )
            for enc_id, _, g, rid in changes
        ],
    )
    return len(changes)
