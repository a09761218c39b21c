"""The ingest pipeline: one page from a source into source records and golden records.

:func:`ingest_page` is a plain function (tasks, the CLI, push intake and tests all
call it). For one :class:`connectors.Page` it

1. identifies every resource and computes its content hash (without ``meta``);
2. skips the unchanged ones, and quarantines the invalid ones with their error;
3. stores the valid ones and resolves Patients through :mod:`mpi` in batches;
4. attaches Encounters to their patient's golden record (or lets them wait);
5. applies the page's deletions (``_history`` DELETE entries, Bulk ``deleted``) and
   retires the Patients the source merged into another (a ``replaced-by`` link, an HL7 v2
   A40: :func:`retire_replaced`);
6. writes the cursor that follows the page,

all in the caller's session: the caller commits once, so the page's records and
its cursor are durable together or not at all.
https://hl7.org/fhir/R4/http.html#history, https://hl7.org/fhir/uv/bulkdata/export.html
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.orm import Session

from connectors import Page
from connectors.ndjson import parse_line
from mpi import (
    golden_block_keys,
    holds_block_locks,
    lock_goldens,
    merge_golden,
    recompute_goldens,
    settle_review_items,
    uses_block_locks,
)
from store import CursorRepository
from store.bulk import chunks
from store.db import write_time
from store.events import ENCOUNTER_DELETED, outbox_row
from store.models import Encounter, Link, Outbox, Source, SourceRecord
from sync.encounters import attach_waiting, golden_ids_of_patients, ingest_encounters
from sync.patients import PatientOptions, ingest_patients, replaced_by
from sync.records import (
    LOOKUP_CHUNK,
    STATUS_ACTIVE,
    STATUS_DELETED,
    Incoming,
    KnownLine,
    content_hash,
    describe,
    known_lines,
    line_digest,
    load_records,
    quarantine,
)

log = logging.getLogger(__name__)

#: Who merges a golden record into another because its source merged their Patients.
SOURCE_MERGE_ACTOR = "mpi"
#: Resource types the pipeline understands; resources of other types are kept quarantined.
SUPPORTED_TYPES = ("Patient", "Encounter")
#: Patients resolved per transaction when a page holds more (see :func:`split_page`).
#: The MPI's working set (the batch's candidates and their features) sets the peak
#: memory, and it grows with the database until block keys reach their size cap. Measured
#: with bench.ingest on SQLite, peak RSS from 25k to 100k Patients: 1000 a transaction
#: 248 -> 304 MB, 500: 212 -> 238 MB, 250: 194 -> 207 MB; Patients/s at 25k are the
#: same for 500 and 1000, 250 is ~30% slower at 100k. Shorter transactions also hold the
#: MPI's advisory lock slots for less time, so concurrent workers wait less.
MAX_PATIENTS_PER_TRANSACTION = 500
#: Id prefix of a quarantined entry the connector could not read (named by its position).
UNREADABLE_ID_PREFIX = "unreadable-"


@dataclass
class IngestResult:
    """What one page did. ``resources`` counts every resource received on the page."""

    resources: int = 0
    stored: int = 0
    skipped: int = 0
    quarantined: int = 0
    deleted: int = 0
    waiting: int = 0
    attached: int = 0
    golden_created: int = 0
    review_items: int = 0
    #: Entries the connector could not even read (a line that is not JSON…), kept quarantined.
    unreadable: int = 0

    def add(self, other: IngestResult) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def split_page(page: Page) -> list[Page]:
    """A Patient page cut into transactions of at most :data:`MAX_PATIENTS_PER_TRANSACTION`.

    The MPI holds an advisory lock on every block key of the Patients it resolves until
    the transaction ends (keys hashed into :data:`mpi.resolve.LOCK_SLOTS` slots, so the
    lock table stays bounded); a smaller transaction lets other writers in sooner. Only
    the last part carries the cursor, the deletions and the replacements.
    """
    limit = MAX_PATIENTS_PER_TRANSACTION
    if page.resource_type != "Patient" or len(page.resources) + len(page.lines) <= limit:
        return [page]
    rtype = page.resource_type
    parts = [
        Page(rtype, page.resources[i : i + limit], None)
        for i in range(0, len(page.resources), limit)
    ]
    parts.extend(
        Page(rtype, [], None, lines=page.lines[i : i + limit])
        for i in range(0, len(page.lines), limit)
    )
    last = parts[-1]
    parts[-1] = Page(
        rtype,
        last.resources,
        page.cursor,
        page.deleted,
        page.outcomes,
        last.lines,
        replaced=page.replaced,
    )
    return parts


def _read_lines(
    session: Session, source_id: int, page: Page, *, look_up: bool = True
) -> tuple[list[Incoming | KnownLine], list[dict[str, Any]]]:
    """The page's NDJSON lines (:attr:`Page.lines`), in order: a :class:`KnownLine` for each
    line a stored record was last stored from and that needs no work (found by the
    lines' digests, one read: :func:`sync.records.known_lines`, left out when
    ``look_up`` is false), never decoded; the others decoded and described, with their
    digest. And an OperationOutcome per line that is not a JSON object."""
    rtype = page.resource_type
    digests = [line_digest(line) for line, _, _ in page.lines]
    known = known_lines(session, source_id, rtype, digests) if look_up else {}
    entries: list[Incoming | KnownLine] = []
    outcomes: list[dict[str, Any]] = []
    for (line, where, number), digest in zip(page.lines, digests, strict=True):
        stored = known.get(digest)
        if stored is not None:
            entries.append(stored)
            continue
        resource, outcome = parse_line(line, where, number)
        if resource is not None:
            entries.append(describe(resource, rtype, digest))
        elif outcome is not None:
            outcomes.append(outcome)
    return entries, outcomes


def _to_ingest(
    entries: Sequence[Incoming | KnownLine], resource_type: str
) -> tuple[list[Incoming], int]:
    """The entries of a page left to ingest, one per resource id (:func:`_latest_per_id`),
    and how many were skipped. A :class:`KnownLine` is skipped, unless another entry of
    the page has its id: then it takes part in the choice as the stored record it stands
    for (the newer version wins, or the later line), exactly as if it had been decoded."""
    items = [entry for entry in entries if isinstance(entry, Incoming)]
    if len(items) == len(entries):
        unique = _latest_per_id(items)
        return unique, len(entries) - len(unique)
    decoded = {item.resource_id for item in items}
    standing: set[int] = set()
    sequence: list[Incoming] = []
    for entry in entries:
        if isinstance(entry, Incoming):
            sequence.append(entry)
        elif entry.resource_id in decoded:
            stand_in = entry.incoming(resource_type)
            standing.add(id(stand_in))
            sequence.append(stand_in)
    unique = [item for item in _latest_per_id(sequence) if id(item) not in standing]
    return unique, len(entries) - len(unique)


def _latest_per_id(items: Sequence[Incoming]) -> list[Incoming]:
    """One entry per resource id: the newest by ``meta.lastUpdated``, else the last one."""
    chosen: dict[str, Incoming] = {}
    for item in items:
        kept = chosen.get(item.resource_id)
        if (
            kept is not None
            and kept.last_updated is not None
            and item.last_updated is not None
            and item.last_updated < kept.last_updated
        ):
            continue
        chosen[item.resource_id] = item
    return list(chosen.values())


class UnknownSourceError(LookupError):
    """The source of a page is not (or no longer) registered."""


def hold_source(session: Session, source_id: int) -> None:
    """Take the page's share of the source row (PostgreSQL ``FOR KEY SHARE``, held until
    the page commits), or raise :class:`UnknownSourceError`.

    ``source_record`` keeps no foreign key to ``source`` (migration 0003): the key locked
    the same source row once per inserted record. Locking it once per page keeps what
    the key gave: a ``DELETE FROM source`` waits for the page and then deletes its
    records too (its trigger), and a page of a source deleted before it began writes
    nothing. SQLite has one writer at a time, so the check is all it needs."""
    held = session.scalar(
        select(Source.id).where(Source.id == source_id).with_for_update(read=True, key_share=True)
    )
    if held is None:
        raise UnknownSourceError(f"source {source_id} is not registered")


def ingest_page(
    session: Session,
    source_id: int,
    page: Page,
    *,
    options: PatientOptions | None = None,
    write_cursor: bool = True,
    lines_stored: bool = True,
) -> IngestResult:
    """Ingest one page of ``source_id`` into ``session`` (the caller commits).

    ``write_cursor=False`` is for pushed resources, which have no place in a stream.
    ``lines_stored=False`` says that the source had no record of the page's type when
    the stream began (:func:`sync.records.has_records`): the page's lines are then not
    looked up by their digests (none can be found but the stream's own repeats, which
    the content hash skips as well).
    """
    options = options or PatientOptions()
    hold_source(session, source_id)
    rtype = page.resource_type
    entries: list[Incoming | KnownLine] = [describe(raw, rtype) for raw in page.resources]
    outcomes = page.outcomes
    if page.lines:
        from_lines, unreadable = _read_lines(session, source_id, page, look_up=lines_stored)
        entries.extend(from_lines)
        outcomes = [*outcomes, *unreadable]
    result = IngestResult(resources=len(entries))
    unique, skipped = _to_ingest(entries, rtype)
    result.skipped += skipped
    replaced: dict[str, str] = {}
    if rtype == "Patient":
        # The golden records the page's deletions and replacements will rebuild (or merge)
        # are locked with its records' keys, in the one lock call a transaction makes
        # (mpi.resolve.lock_block_keys).
        claims = {**page.replaced, **_replacement_claims(unique)}
        touched = [*page.deleted, *claims, *claims.values()]
        also_lock = (
            golden_block_keys(session, golden_ids_of_patients(session, source_id, touched).values())
            if touched and uses_block_locks(session)
            else []
        )
        patients = ingest_patients(session, source_id, unique, options, also_lock=also_lock)
        result.stored += patients.stored
        result.skipped += patients.skipped
        result.quarantined += patients.quarantined
        result.golden_created += patients.golden_created
        result.review_items += patients.review_items
        result.attached += attach_waiting(session, source_id, patients.golden_by_resource)
        replaced = {**page.replaced, **patients.replaced}
    elif rtype == "Encounter":
        encounters = ingest_encounters(session, source_id, unique)
        result.stored += encounters.stored
        result.skipped += encounters.skipped
        result.quarantined += encounters.quarantined
        result.waiting += encounters.waiting
    else:
        result.quarantined += _quarantine_unsupported(session, source_id, unique)
    if outcomes:
        result.unreadable += _quarantine_unreadable(session, source_id, rtype, outcomes)
        result.quarantined += len(outcomes)
    if page.deleted:
        result.deleted += apply_deletions(session, source_id, rtype, page.deleted)
    if replaced:
        retired = retire_replaced(session, source_id, replaced)
        result.deleted += retired.deleted
        result.attached += retired.attached
    if write_cursor and page.cursor is not None:
        CursorRepository(session).set(source_id, rtype, page.cursor)
    session.flush()
    log.debug(
        "page ingested",
        extra={
            "source_id": source_id,
            "resource_type": rtype,
            "resources": result.resources,
            "skipped": result.skipped,
            "quarantined": result.quarantined,
        },
    )
    return result


def _replacement_claims(entries: Sequence[Incoming]) -> dict[str, str]:
    """The page's Patients that say another replaced them (before they are validated: what
    to lock; :func:`sync.patients.ingest_patients` decides on the valid ones)."""
    claims: dict[str, str] = {}
    for entry in entries:
        survivor = replaced_by(entry.raw) if "link" in entry.raw else None
        if survivor is not None:
            claims[entry.resource_id] = survivor
    return claims


@dataclass
class Retired:
    deleted: int = 0
    merged: int = 0
    attached: int = 0


def retire_replaced(session: Session, source_id: int, replaced: Mapping[str, str]) -> Retired:
    """The source merged each Patient of ``replaced`` into the Patient it maps to (a FHIR
    ``replaced-by`` link, an HL7 v2 A40): the replaced record is no longer used.

    - When the replaced record was all its golden record held, and the survivor's golden
      record is another, that golden record is merged into the survivor's
      (:func:`mpi.merge_golden`: its id answers ``replaced-by``, so a consumer that knew it
      finds the person). The source vouches for the two, and the merged golden record
      brings nothing else: no other source's record moves on this word.
    - The replaced record is deleted (:func:`apply_deletions`): its values leave the
      golden record they fed.
    - Its Encounters are the survivor's from now on, attached to the survivor's golden
      record (or waiting for it).

    The caller holds the block locks of every golden record concerned (``ingest_page``)."""
    retired = Retired()
    goldens = golden_ids_of_patients(session, source_id, [*replaced, *replaced.values()])
    for prior, survivor in replaced.items():
        loser, winner = goldens.get(prior), goldens.get(survivor)
        if loser is None or winner is None or loser == winner:
            continue
        if _others_in(session, loser, source_id, prior):
            continue
        merge_golden(
            session,
            loser,
            winner,
            actor=SOURCE_MERGE_ACTOR,
            method="AUTO",
            explanation={"source_id": source_id, "reason": "replaced-by"},
        )
        retired.merged += 1
        for key, golden_id in goldens.items():  # later pairs see the merge
            if golden_id == loser:
                goldens[key] = winner
    retired.deleted = apply_deletions(session, source_id, "Patient", list(replaced))
    _say_replaced(session, source_id, replaced)
    for prior, survivor in replaced.items():
        session.execute(
            update(Encounter)
            .where(Encounter.source_id == source_id, Encounter.patient_resource_id == prior)
            .values(patient_resource_id=survivor)
            .execution_options(synchronize_session=False)
        )
    survivors = golden_ids_of_patients(session, source_id, sorted(set(replaced.values())))
    retired.attached = attach_waiting(session, source_id, survivors)
    log.info(
        "replaced patients retired",
        extra={"source_id": source_id, "count": len(replaced), "merged": retired.merged},
    )
    return retired


def _say_replaced(session: Session, source_id: int, replaced: Mapping[str, str]) -> None:
    """Each retired record says which Patient replaced it, as a FHIR server's merged-away
    Patient does (its ``replaced-by`` link), so that whatever later names it goes to the
    survivor (:func:`sync.encounters.replacements`). A FHIR record says so already. An HL7
    v2 feed's record (the Patient its PID maps to) is given the link its A40 stated, and
    a prior patient the feed never sent gets a retired record of its own."""
    stored = {
        record.resource_id: record
        for record in session.scalars(
            select(SourceRecord).where(
                SourceRecord.source_id == source_id,
                SourceRecord.resource_type == "Patient",
                SourceRecord.resource_id.in_(list(replaced)),
            )
        )
    }
    for prior, survivor in replaced.items():
        record = stored.get(prior)
        if record is not None and record.raw is not None and replaced_by(record.raw) == survivor:
            continue
        link = {"other": {"reference": f"Patient/{survivor}"}, "type": "replaced-by"}
        if record is None:
            session.add(
                SourceRecord(
                    source_id=source_id,
                    resource_type="Patient",
                    resource_id=prior,
                    status=STATUS_DELETED,
                    raw={"resourceType": "Patient", "id": prior, "active": False, "link": [link]},
                )
            )
        else:
            raw = record.raw or {"resourceType": "Patient", "id": prior}
            kept = [
                other
                for other in raw.get("link") or []
                if not (isinstance(other, dict) and other.get("type") == "replaced-by")
            ]
            record.raw = {**raw, "link": [*kept, link]}
    session.flush()


def _others_in(session: Session, golden_id: str, source_id: int, resource_id: str) -> bool:
    """Whether ``golden_id`` holds an active record besides the source's Patient ``resource_id``."""
    others = session.scalar(
        select(func.count())
        .select_from(Link)
        .join(SourceRecord, SourceRecord.id == Link.source_record_id)
        .where(
            Link.golden_id == golden_id,
            SourceRecord.status == STATUS_ACTIVE,
            ~and_(
                SourceRecord.source_id == source_id,
                SourceRecord.resource_type == "Patient",
                SourceRecord.resource_id == resource_id,
            ),
        )
    )
    return bool(others)


def _quarantine_unsupported(session: Session, source_id: int, items: Sequence[Incoming]) -> int:
    if not items:
        return 0
    ids = [i.resource_id for i in items]
    existing = load_records(session, source_id, items[0].resource_type, ids)
    for item in items:
        error = {
            "error": "unsupported-type",
            "resource_type": item.resource_type,
            "resource_id": item.resource_id,
            "issues": [{"path": item.resource_type, "reason": "resource type not synced"}],
        }
        quarantine(session, source_id, item, error, existing.get(item.resource_id))
    return len(items)


def _quarantine_unreadable(
    session: Session, source_id: int, resource_type: str, outcomes: Sequence[dict[str, Any]]
) -> int:
    """Keep what the connector could not read (its OperationOutcome names only the position)."""
    items = []
    for outcome in outcomes:
        digest = content_hash(outcome)
        items.append(
            Incoming(
                outcome,
                resource_type,
                UNREADABLE_ID_PREFIX + digest[:40],
                digest,
                None,
                None,
                "unreadable",
            )
        )
    existing = load_records(session, source_id, resource_type, [i.resource_id for i in items])
    for item in items:
        issues = [
            {"path": resource_type, "reason": str(issue.get("diagnostics", "unreadable"))}
            for issue in item.raw.get("issue") or [{}]
        ]
        error = {"error": "unreadable", "resource_type": resource_type, "issues": issues}
        quarantine(session, source_id, item, error, existing.get(item.resource_id))
    return len(items)


def apply_deletions(
    session: Session, source_id: int, resource_type: str, resource_ids: Sequence[str]
) -> int:
    """Mark the source's records deleted; recompute the golden records they fed.

    A deleted Patient's golden record is rebuilt from its remaining active records
    (:func:`mpi.recompute_goldens`, all of them at once, with their ``patient.updated``
    events); a deleted Encounter leaves the ``encounter`` table with an
    ``encounter.deleted`` event.
    Returns how many stored records changed to deleted.
    """
    changed = 0
    goldens: set[str] = set()
    deleted_records: list[int] = []
    events: list[dict[str, object]] = []
    now = write_time(session)
    if resource_type == "Patient" and uses_block_locks(session) and not holds_block_locks(session):
        # Before the records change: an ingest that links a record to a golden record
        # these deletions empty waits for them, or they wait for it (its link is then seen
        # and the golden record stays active). A transaction that locked already (its
        # page's records) had these golden records locked with them (ingest_page).
        lock_goldens(session, golden_ids_of_patients(session, source_id, resource_ids).values())
    for chunk in chunks(list(dict.fromkeys(resource_ids)), LOOKUP_CHUNK):
        # One UPDATE ... RETURNING per chunk (objects the session holds follow it).
        marked = session.execute(
            update(SourceRecord)
            .where(
                SourceRecord.source_id == source_id,
                SourceRecord.resource_type == resource_type,
                SourceRecord.resource_id.in_(chunk),
                SourceRecord.status != STATUS_DELETED,
            )
            .values(status=STATUS_DELETED, updated_at=now)
            .returning(SourceRecord.id, SourceRecord.resource_id)
        ).all()
        if not marked:
            continue
        changed += len(marked)
        ids = [row[0] for row in marked]
        deleted_records.extend(ids)
        if resource_type == "Patient":
            goldens.update(
                session.scalars(select(Link.golden_id).where(Link.source_record_id.in_(ids)))
            )
        elif resource_type == "Encounter":
            resource_id_of = dict(marked)
            leaving = session.execute(
                select(Encounter.id, Encounter.golden_id, Encounter.source_record_id).where(
                    Encounter.source_record_id.in_(ids)
                )
            ).all()
            events.extend(
                outbox_row(
                    ENCOUNTER_DELETED,
                    encounter_id,
                    now=now,
                    golden_id=golden_id,
                    source_id=source_id,
                    resource_id=resource_id_of[record_id],
                )
                for encounter_id, golden_id, record_id in leaving
            )
            session.execute(delete(Encounter).where(Encounter.id.in_([row[0] for row in leaving])))
    recompute_goldens(session, goldens)
    if resource_type == "Patient":  # the deleted records' open review items
        settle_review_items(session, record_ids=deleted_records)
    if events:
        session.execute(insert(Outbox), events)
    if changed:
        log.info(
            "records deleted",
            extra={"source_id": source_id, "resource_type": resource_type, "count": changed},
        )
    return changed
