"""Real-time resolution: each incoming source Patient joins (or founds) a golden record.

Set-based: a batch of N records costs a fixed number of statements per table, not N
times that. :func:`resolve_patients`

1. takes the advisory locks of the whole batch at once (PostgreSQL, see below);
2. loads, in a handful of queries for the whole batch, what the batch can meet: the
   stored links of its records, the size of each of its block keys, the records filed
   under the usable ones with their golden records, the members of those golden
   records (features from the process cache, else decoded from their stored
   ``match_features``, else extracted from their normalized JSON; a record's JSON is
   read and parsed whole only if its golden record is rendered) and the
   steward decisions on its records. These reads are plain SQL sent to the DBAPI
   cursor (:class:`mpi.reads.Reads`): SQLAlchemy's per-statement work cost more than
   SQLite's answers;
3. decides in memory, in input order, with :class:`mpi.batch.MemoryResolver` (the very
   code batch resolution uses) seeded with that state: every record sees the stored
   records and the records of the batch before it, exactly as if they had been resolved
   and written one by one (the same candidates, :func:`mpi.decision.decide`, guards,
   transitivity, merges, reviews, steward decisions never overridden). A candidate the
   seed did not foresee (a key of the batch grew past the block-size limit and the
   ranking changed) is loaded before its record is decided;
4. writes everything with one executemany per table: block keys, links, link history,
   golden records (each rendered ONCE, in its final state, whatever happened to it in
   the batch: see :func:`mpi.storage.write_goldens`), versions, search tokens, field
   provenance, review items, outbox events (``patient.created``/``.updated``/
   ``.merged``, with the version each golden record has after the batch) and the
   encounters that follow their patient. Nothing commits here.

A batch of one record (push intake, incremental sync) goes down the same path.

On PostgreSQL the transaction first takes ``pg_advisory_xact_lock`` on the lock slots of
every block key of the batch, once, sorted, in one statement
(https://www.postgresql.org/docs/current/functions-admin.html#FUNCTIONS-ADVISORY-LOCKS):
two workers ingesting the same person at the same moment serialize on a shared key, and
the second one sees the first one's golden record. Keys are hashed into
:data:`LOCK_SLOTS` slots, so a page of a thousand Patients holds at most that many
locks (PostgreSQL's shared lock table is sized for ~64 per connection) at the price of
unrelated batches sometimes waiting for each other.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    delete,
    insert,
    select,
    text,
)
from sqlalchemy.orm import Session

from fhir_mapping import SourcePatient
from mpi.batch import MAX_MEMBERS_PER_GOLDEN, MemoryResolver
from mpi.blocking import block_keys
from mpi.decision import AUTO_GRADES, Candidate, Decision, Member, score_candidates
from mpi.features import (
    MatchFeatures,
    decode_features,
    extract_features,
    features_from_normalized,
)
from mpi.model import MatchModel
from mpi.reads import Reads, decode, decode_for_features
from mpi.review import settle_review_items, withdraw_review_items
from mpi.settings import MatchSettings
from mpi.storage import (
    GoldenPlan,
    cached_record,
    event_row,
    forget_reread_records,
    parsed_record,
    write_goldens,
)
from store.bulk import (
    OUTBOX_COLUMNS,
    OUTBOX_JSON,
    BulkWriter,
    chunks,
    in_list,
    update_where,
)
from store.db import write_time
from store.events import ENCOUNTER_UPDATED, outbox_values
from store.jsontext import json_text
from store.models import (
    Link,
    ReviewItem,
    SourceRecord,
    new_uuid,
)
from store.types import utcnow

log = logging.getLogger(__name__)

#: Advisory-lock class of the MPI's block-key locks (the other int4 is the slot).
LOCK_CLASS = 0x4D5049  # "MPI"
#: Block keys are hashed into this many advisory-lock slots.
LOCK_SLOTS = 1024
#: Values per ``IN (...)`` list (SQLite allows 32766 bound parameters per statement).
IN_CHUNK = 5000
#: Records whose stored data one set-based pass loads and decides at once.
DEFAULT_CHUNK = 1000
#: Block-key members a set-based pass of a batch reads at most (see :func:`_passes`):
#: about what a pass of 500 Patients reads at 25k Patients in bench.ingest.
PASS_BLOCK_ROWS = 12_000
#: ``review_item.reason`` of a linked record whose new version is only a ``possible``
#: match for the rest of its golden record (:func:`_doubt`).
UPDATE_LESS_SURE = "update-less-sure"
#: Records a pass holds at least, whatever its block keys hold (a pass costs a few
#: statements of its own).
MIN_PASS_RECORDS = 50

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where one source record ended up."""

    source_record_id: int
    golden_id: str
    grade: str
    score: float | None
    created: bool
    review_item_id: int | None = None


def lock_slots(keys: Sequence[str]) -> list[int]:
    """The advisory-lock slots of ``keys``, sorted (lockers never deadlock)."""
    return sorted({zlib.crc32(key.encode()) % LOCK_SLOTS for key in keys})


#: ``session.info`` key: the transaction that took advisory locks (:func:`holds_block_locks`).
_LOCKED_IN = "askonce.block_locks"


def lock_block_keys(session: Session, keys: Sequence[str]) -> None:
    """Take the transaction-scoped advisory locks of ``keys`` in one statement
    (PostgreSQL; SQLite has one writer). ``unnest`` returns the sorted array in order.

    A transaction takes its locks once: a second set taken later could wait for a
    transaction that waits for the first (a deadlock), so whoever needs more locks in the
    same transaction passes them to the first call (``resolve_patients``' ``also_lock``)
    and checks :func:`holds_block_locks` before locking on its own."""
    if not keys or not uses_block_locks(session):
        return
    session.execute(
        text("SELECT count(pg_advisory_xact_lock(:cls, s)) FROM unnest(CAST(:slots AS int[])) s"),
        {"cls": LOCK_CLASS, "slots": lock_slots(keys)},
    )
    session.info[_LOCKED_IN] = session.get_transaction()


def uses_block_locks(session: Session) -> bool:
    """Whether writers lock block keys here: on PostgreSQL (SQLite has one writer)."""
    return session.get_bind().dialect.name == "postgresql"


def holds_block_locks(session: Session) -> bool:
    """Whether the session's current transaction has taken block-key locks already."""
    locked = session.info.get(_LOCKED_IN)
    return locked is not None and locked is session.get_transaction()


@dataclass(slots=True)
class _Item:
    row: SourceRecord
    patient: SourcePatient
    features: MatchFeatures
    keys: list[str]


@dataclass(slots=True)
class _Merge:
    loser: str
    survivor: str
    records: list[int]


@dataclass
class _Writes:
    """Everything a batch writes, in the order it happened."""

    links: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    reviews: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (item index, row)
    #: (event, golden id, payload, add the golden record's version to the payload)
    events: list[tuple[str, str, dict[str, Any], bool]] = field(default_factory=list)
    merges: list[_Merge] = field(default_factory=list)
    created: set[str] = field(default_factory=set)
    touched: dict[str, None] = field(default_factory=dict)  # golden ids, in order
    #: Linked records that left their golden record (:func:`_detach`), with the golden
    #: record they left: their stored link is deleted before the batch's links are
    #: inserted, and their open review items are withdrawn.
    detached: dict[int, str] = field(default_factory=dict)
    #: Review items for linked records whose new version is only a ``possible`` match for
    #: the rest of their golden record (:func:`_doubt`), as in :attr:`reviews`; written
    #: unless the record already has an open item about that golden record.
    doubts: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


class _KnownBlocks:
    """The stored block-key rows of a page's keys, read once for all its passes.

    :func:`_passes` needs the size of every key of the page to cut it, and each pass then
    read its keys' sizes and members again (:meth:`Reads.block_members`): two index seeks
    per key, ~5-8 us each on SQLite (0.31 s of _passes and ~1/3 of BatchState's reads at
    6k Patients). Instead the page's rows are read once (sizes, and the members of keys
    that are usable) and each pass takes its keys' rows from here, kept current with what
    the passes before it inserted (the pass's own keys, :func:`_send_block_keys`). Exact
    while only inserts happened: the page's keys are locked (PostgreSQL) and nothing else
    writes ``block_key`` in the transaction; once a pass deletes the keys of its stored
    records (:attr:`valid` False), and for a pass with stored records (whose own limit is
    higher), the pass reads the database as before."""

    def __init__(self, reads: Reads, keys: Sequence[str], limit: int) -> None:
        #: Members at most: larger keys are read as their size only.
        self.limit = limit
        self.sizes: dict[str, int] = {}
        #: Members of each key read with them (its size was at most :attr:`limit`).
        self.members: dict[str, list[int]] = {}
        self.valid = True
        sizes, members = self.sizes, self.members
        for key, size, member in reads.block_members(keys, limit):
            sizes[key] = size
            if member is not None:
                members.setdefault(key, []).append(member)

    def rows(self, keys: Sequence[str], limit: int) -> list[tuple[str, int, int | None]]:
        """What :meth:`Reads.block_members` would return now for ``keys`` (of the page)
        and ``limit`` (at most :attr:`limit`)."""
        assert self.valid and limit <= self.limit
        out: list[tuple[str, int, int | None]] = []
        sizes, members = self.sizes, self.members
        for key in keys:
            size = sizes.get(key, 0)
            if not size:
                continue
            if size > limit:
                out.append((key, size, None))
            else:  # at most limit now, so at most limit when read: its members were read
                out.extend((key, size, member) for member in members[key])
        return out

    def add(self, rows: Iterable[tuple[str, int]]) -> None:
        """Rows (key, record) inserted into ``block_key``."""
        sizes, members = self.sizes, self.members
        for key, record in rows:
            size = sizes.get(key, 0)
            sizes[key] = size + 1
            if size == 0:
                members[key] = [record]
            elif size <= self.limit:
                members[key].append(record)


class BatchState:
    """The stored state a batch of records can meet, seeded into a :class:`MemoryResolver`.

    ``records`` are the batch's (id, features, block keys); ``probes`` the block keys of
    records that are only looked up (``$match``). Everything else is read in set-based
    queries (see the module docstring); :meth:`ensure` loads more on demand.
    """

    def __init__(
        self,
        session: Session,
        settings: MatchSettings,
        model: MatchModel,
        records: Sequence[tuple[int, MatchFeatures, list[str]]],
        *,
        probes: Sequence[list[str]] = (),
        reads: Reads | None = None,
        known: _KnownBlocks | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.resolver = MemoryResolver(model, settings, new_golden=lambda _record: new_uuid())
        #: Stored link of each record we know of (any status): golden id, grade, score.
        self.links: dict[int, tuple[str, str, float | None]] = {}
        #: Records of the batch whose stored link a steward or the portal made (MANUAL):
        #: a new version of one is never moved (:func:`_checked_against_its_golden`).
        self.manual: set[int] = set()
        #: Golden records whose members are loaded (or that were created by this batch).
        self.loaded: set[str] = set()
        #: Inactive source records still linked to a loaded golden record.
        self.inactive: dict[str, list[int]] = {}
        #: Steward decisions per record of the batch: {other record: decision}.
        self.decisions: dict[int, dict[int, str]] = {}
        #: Golden records merged away by this batch -> the survivor.
        self.merged_into: dict[str, str] = {}
        self.skipped: dict[str, bool] = {}
        #: Records of the batch that were linked when it was loaded (their block keys
        #: are replaced).
        self.stored: set[int] = set()
        #: Stored block keys of each stored record of the batch (those in the index).
        self.old_keys: dict[int, list[str]] = {}
        #: Stored records whose golden record was looked up (see :meth:`place`).
        self.placed: set[int] = set()
        #: Stored records this batch decoded (survivorship reuses them).
        self.patients: dict[int, SourcePatient] = {}
        #: Stored records read for their features only: their normalized JSON (as read),
        #: None while it is not read (their features were stored, see :meth:`load_goldens`).
        self.normalized: dict[int, str | dict[str, Any] | None] = {}
        #: Merges allowed while deciding the current record (see :meth:`allow_merge`).
        self.pending: list[_Merge] = []
        #: What the resolver ranked for each new record of the batch when it was loaded
        #: (:meth:`ensure` reuses it while none of the record's keys changed since).
        self.ranked: dict[int, list[int]] = {}
        #: Block keys whose members changed since the batch was loaded (:meth:`rekeyed`).
        self.changed_keys: set[str] = set()
        if reads is None:
            reads = Reads(session)
        else:  # reused across the chunks of a batch: what is pending is read too
            session.flush()
        self.reads = reads
        self._load(records, probes, known)

    # --- loading -------------------------------------------------------------------

    def _load(
        self,
        records: Sequence[tuple[int, MatchFeatures, list[str]]],
        probes: Sequence[list[str]],
        known: _KnownBlocks | None,
    ) -> None:
        reads, resolver = self.reads, self.resolver
        ids = [record_id for record_id, _, _ in records]
        for record_id, golden_id, grade, score, method in reads.links(ids):
            self.links[record_id] = (golden_id, grade, score)
            if method == "MANUAL":
                self.manual.add(record_id)
        stored = self.stored = {r for r in ids if r in self.links}
        keys = sorted(
            {key for _, _, ks in records for key in ks} | {k for ks in probes for k in ks}
        )
        # A stored record of the batch gives its keys back before taking new ones: keys
        # this close to the limit may become usable again, so their members are read.
        limit = self.settings.max_block_size + len(stored)
        members = resolver.index.members
        if known is not None and known.valid and not stored and not probes:
            rows = known.rows(keys, limit)
        else:
            rows = reads.block_members(keys, limit)
        for key, _size, member in rows:
            if member is None:  # never usable by this batch: only its size matters
                members[key] = list(range(-1, -limit - 2, -1))
                continue
            members[key].append(member)
            if member in stored:
                self.old_keys.setdefault(member, []).append(key)
        for record_id, features, _ in records:
            resolver.features[record_id] = features
        self._load_decisions(ids)
        wanted = {self.links[r][0] for r in stored}
        for others in self.decisions.values():
            wanted.update(self.links[o][0] for o in others if o in self.links)
        first = self.ranked
        for record_id, _, record_keys in records:
            if record_id not in stored and record_id not in first:
                first[record_id] = self._ranked(record_keys)
        ranked = list(first.values())
        ranked.extend(self._ranked(probe) for probe in probes)
        self.place({r for found in ranked for r in found})
        for found in ranked:
            wanted.update(self._goldens_of(found))
        self.load_goldens(wanted)

    def _ranked(self, keys: list[str]) -> list[int]:
        """The records a record with ``keys`` is compared with (as the resolver ranks them)."""
        return self.resolver.index.candidates(keys, self.settings.max_candidates)

    def _goldens_of(self, records: list[int]) -> set[str]:
        golden_of = self.resolver.golden_of
        return {g for g in (golden_of.get(r) for r in records) if g is not None}

    def place(self, records: set[int]) -> None:
        """Read the active golden record of stored records not placed yet (one query)."""
        golden_of = self.resolver.golden_of
        unknown = sorted(r for r in records if r not in golden_of and r not in self.placed)
        for record_id, golden_id in self.reads.active_goldens(unknown):
            golden_of[record_id] = golden_id
        self.placed.update(unknown)

    def _load_decisions(self, ids: list[int]) -> None:
        rows = self.reads.decisions(ids)
        if not rows:
            return
        batch = set(ids)
        others: set[int] = set()
        for a, b, decision in rows:
            for record, other in ((a, b), (b, a)):
                if record in batch:
                    self.decisions.setdefault(record, {})[other] = decision
                    others.add(other)
        missing = sorted(others - self.links.keys())
        for record_id, golden_id, grade, score, _ in self.reads.links(missing):
            self.links[record_id] = (golden_id, grade, score)

    def load_goldens(self, goldens: set[str]) -> None:
        """Read the members of stored golden records (and the features of the first
        :data:`~mpi.batch.MAX_MEMBERS_PER_GOLDEN` of each) into the resolver."""
        wanted = sorted(g for g in goldens if g not in self.loaded)
        if not wanted:
            return
        resolver = self.resolver
        decoded: dict[int, tuple[SourcePatient, MatchFeatures]] = {}
        stale: list[int] = []
        for row in self.reads.members(wanted):
            golden_id, record_id, grade, score, g_status, r_status, content_hash = row[:7]
            stored, normalized = row[7:]
            self.links.setdefault(record_id, (golden_id, grade, score))
            if g_status != "active":
                continue
            if r_status != "active":
                self.inactive.setdefault(golden_id, []).append(record_id)
                continue
            members = resolver.members.setdefault(golden_id, [])
            members.append(record_id)
            resolver.golden_of[record_id] = golden_id
            if len(members) <= MAX_MEMBERS_PER_GOLDEN and record_id not in resolver.features:
                cached = cached_record(record_id, content_hash)
                if cached is not None:
                    decoded[record_id] = cached
                    continue
                # Only the features: the record is parsed if its golden record is
                # rendered (:meth:`parse_members`). Not added to the process cache: a
                # candidate met once would only age there, and its objects, surviving
                # young collections, made each of them walk thousands (p99 latency).
                features = decode_features(stored, content_hash)
                if features is not None:
                    resolver.features[record_id] = features
                    self.normalized[record_id] = None  # read if it is rendered
                elif normalized is not None:  # stored before its features were
                    self._features_from(record_id, normalized)
                else:  # stale features (see :func:`decode_features`): the JSON is read below
                    stale.append(record_id)
        for record_id, normalized in self.reads.normalized(stale):
            self._features_from(record_id, normalized)
        self.loaded.update(wanted)
        self._remember(decoded)

    def _features_from(self, record_id: int, normalized: str | None) -> None:
        """Features of a record extracted from its normalized JSON (kept for
        :meth:`parse_members`)."""
        data = decode_for_features(normalized)
        self.resolver.features[record_id] = features_from_normalized(data)
        self.normalized[record_id] = normalized

    def parse_members(self, goldens: Iterable[str]) -> None:
        """Parse the records of ``goldens`` read as features only (their golden records
        are about to be rendered, which needs the whole record): their normalized JSON
        is read in one query for all of them, unless it was read with their features."""
        wanted = [
            record_id
            for golden in goldens
            for record_id in self.resolver.members.get(golden, ())
            if record_id in self.normalized
        ]
        unread = [record_id for record_id in wanted if self.normalized[record_id] is None]
        self.normalized.update(self.reads.normalized(unread))
        for record_id in wanted:
            data = decode(self.normalized.pop(record_id))
            self.patients[record_id] = SourcePatient.from_dict(data)

    def _remember(self, records: dict[int, tuple[SourcePatient, MatchFeatures]]) -> None:
        for record_id, (patient, features) in records.items():
            self.resolver.features[record_id] = features
            self.patients[record_id] = patient

    def ensure(self, keys: list[str], record: int | None = None) -> list[int]:
        """Load whatever deciding for a record with ``keys`` needs and is not loaded yet
        (nothing, unless the batch itself changed which records rank first). Returns
        the records the resolver ranks for ``keys`` (loading leaves the index as it is,
        so :meth:`MemoryResolver.add` takes them instead of ranking again: a third of
        the ranking's ~1.3 s at 10k Patients). The new ``record`` of the batch that has
        ``keys`` gets the ranking made when the batch was loaded, unless a key of it
        changed since (the ranking reads only its keys' members)."""
        resolver = self.resolver
        found = self.ranked.pop(record, None) if record is not None else None
        if found is None or not self.changed_keys.isdisjoint(keys):
            found = self._ranked(keys)
        self.place(set(found))
        goldens = self._goldens_of(found)
        self.load_goldens(goldens)
        missing = [
            r
            for g in goldens
            for r in resolver.members.get(g, [])[:MAX_MEMBERS_PER_GOLDEN]
            if r not in resolver.features
        ]
        if missing:
            self.reads.settle()
            hashes = dict(
                self.session.execute(
                    select(SourceRecord.id, SourceRecord.content_hash).where(
                        SourceRecord.id.in_(missing)
                    )
                ).all()
            )
            self._remember(_records_for(self.session, list(hashes.items())))
        return found

    # --- the view of one record ----------------------------------------------------

    def golden_now(self, record_id: int) -> str | None:
        """The golden record ``record_id`` is linked to at this point of the batch."""
        golden = self.resolver.golden_of.get(record_id)
        if golden is None:
            link = self.links.get(record_id)
            golden = link[0] if link is not None else None
        return None if golden is None else self.survivor_of(golden)

    def survivor_of(self, golden: str) -> str:
        """``golden``, or the golden record it was merged into by this batch."""
        while golden in self.merged_into:
            golden = self.merged_into[golden]
        return golden

    def steward(self, record_id: int) -> tuple[str | None, set[str]]:
        """(golden a steward matched this record to, goldens a steward said it is not)."""
        manual: str | None = None
        blocked: set[str] = set()
        for other, decision in self.decisions.get(record_id, {}).items():
            golden = self.golden_now(other)
            if golden is None:
                continue
            if decision == "match":
                manual = golden
            else:
                blocked.add(golden)
        return manual, blocked

    def rekeyed(self, keys: Iterable[str]) -> None:
        """``keys`` gained or lost members in the resolver's index (a record was filed
        under them, or a stored record gave them back)."""
        self.changed_keys.update(keys)

    def unfile(self, record_id: int, keys: Sequence[str]) -> None:
        """Take ``record_id`` out of the resolver's index under ``keys`` (its old ones)."""
        index_members = self.resolver.index.members
        for key in keys:
            members = index_members.get(key)
            if members is not None and record_id in members:
                members.remove(record_id)
        self.rekeyed(keys)

    def skipped_keys(self, keys: list[str]) -> int:
        index = self.resolver.index
        return sum(1 for key in keys if len(index.members.get(key, ())) > index.max_block_size)

    def records_of(self, golden: str) -> list[int]:
        return list(self.resolver.members.get(golden, [])) + self.inactive.get(golden, [])

    def allow_merge(self, loser: str, survivor: str) -> bool:
        """The resolver's merge hook: a steward's "no-match" between the two groups
        forbids it; an allowed merge is remembered (with the loser's records)."""
        if self.groups_declined(loser, survivor):
            return False
        self.pending.append(_Merge(loser, survivor, self.records_of(loser)))
        self.merged_into[loser] = survivor
        moved = self.inactive.pop(loser, [])
        if moved:  # their links move too (the resolver moves the active members)
            self.inactive.setdefault(survivor, []).extend(moved)
            for record in moved:
                if record in self.resolver.golden_of:
                    self.resolver.golden_of[record] = survivor
        return True

    def groups_declined(self, a: str, b: str) -> bool:
        """True when a steward said some record of ``a`` is not some record of ``b``."""
        records_a, records_b = set(self.records_of(a)), set(self.records_of(b))
        for x, y in self.reads.declined_pairs(sorted(records_a | records_b)):
            if (x in records_a and y in records_b) or (x in records_b and y in records_a):
                return True
        return False


def _records_for(
    session: Session, hashes: Sequence[tuple[int, str | None]]
) -> dict[int, tuple[SourcePatient, MatchFeatures]]:
    """Records given as (id, content hash), parsed, with their features: from the cache,
    else decoded from one query."""
    out: dict[int, tuple[SourcePatient, MatchFeatures]] = {}
    missing: list[int] = []
    for record_id, content_hash in hashes:
        cached = cached_record(record_id, content_hash)
        if cached is not None:
            out[record_id] = cached
        else:
            missing.append(record_id)
    for chunk in chunks(missing, IN_CHUNK):
        rows = session.execute(
            select(SourceRecord.id, SourceRecord.content_hash, SourceRecord.normalized).where(
                SourceRecord.id.in_(chunk)
            )
        ).all()
        for record_id, content_hash, normalized in rows:
            out[record_id] = parsed_record(record_id, content_hash, normalized or {})
    return out


def stored_features(
    session: Session, hashes: Sequence[tuple[int, str | None]]
) -> dict[int, MatchFeatures]:
    """The features of stored records given as (id, content hash), by id: decoded from
    ``match_features``, else extracted from the normalized JSON. Read before the records
    are overwritten with new versions, for ``resolve_patients``' ``previous``."""
    wanted = dict(hashes)
    out: dict[int, MatchFeatures] = {}
    stale: list[int] = []
    for chunk in chunks(list(wanted), IN_CHUNK):
        rows = session.execute(
            select(SourceRecord.id, SourceRecord.match_features).where(SourceRecord.id.in_(chunk))
        )
        for record_id, encoded in rows:
            features = decode_features(encoded, wanted[record_id])
            if features is None:
                stale.append(record_id)
            else:
                out[record_id] = features
    for chunk in chunks(stale, IN_CHUNK):
        documents = session.execute(
            select(SourceRecord.id, SourceRecord.normalized).where(SourceRecord.id.in_(chunk))
        )
        for record_id, normalized in documents:
            out[record_id] = features_from_normalized(normalized or {})
    return out


def candidate_members(
    session: Session, settings: MatchSettings, keys: Sequence[str], exclude: int | None
) -> tuple[list[Member], int]:
    """Linked records sharing a usable block key (and their golden records' other members),
    exactly as :func:`resolve_patients` sees them for a record with ``keys``; writes
    nothing (``$match``). Returns the members and how many keys were skipped as oversized.
    """
    probe = list(keys)
    state = BatchState(session, settings, MatchModel.default(), [], probes=[probe])
    state.ensure(probe)
    members = [m for m in state.resolver.candidate_members(probe) if m.record_id != exclude]
    return members, state.skipped_keys(probe)


def resolve_patients(
    session: Session,
    items: Sequence[tuple[SourceRecord, SourcePatient]],
    *,
    settings: MatchSettings | None = None,
    model: MatchModel | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    features: Sequence[MatchFeatures] | None = None,
    also_lock: Sequence[str] = (),
    previous: Mapping[int, MatchFeatures] | None = None,
) -> list[Resolution]:
    """Resolve source Patient records (already stored and flushed) into golden records.

    Records are resolved in order, so later ones see earlier ones. The advisory locks of
    all of them are taken first, then each ``chunk_size`` records are loaded, decided and
    written set-based. ``features`` are those of ``items``, in order, when the caller has
    extracted them already (``sync.patients`` does, to store them). ``also_lock``: more
    block keys the transaction will need locked (its deletions', :func:`lock_block_keys`).
    ``previous``: the features of the versions that updated records had before
    (:func:`stored_features`, read before they were overwritten), by record id; a
    linked record whose name, birth date or gender changed into a mere ``possible``
    match for its golden record is queued for review (:func:`_in_doubt`).
    Does not commit.
    """
    settings = settings or MatchSettings()
    previous = previous or {}
    reads = Reads(session)
    model = model or reads.active_model()
    if features is None:
        features = [extract_features(patient) for _, patient in items]
    prepared: list[_Item] = []
    for (row, patient), extracted in zip(items, features, strict=True):
        prepared.append(_Item(row, patient, extracted, block_keys(extracted)))
    lock_block_keys(session, [*(key for item in prepared for key in item.keys), *also_lock])
    forget_reread_records(session)
    out: list[Resolution] = []
    known = None
    if len(prepared) > MIN_PASS_RECORDS:  # _passes reads the page's block keys
        keys = sorted({key for item in prepared for key in item.keys})
        known = _KnownBlocks(reads, keys, settings.max_block_size)
    for chunk in _passes(reads, settings, prepared, max(1, chunk_size), known):
        out.extend(_resolve_chunk(session, settings, model, chunk, reads, known, previous))
    return out


def _passes(
    reads: Reads,
    settings: MatchSettings,
    prepared: Sequence[_Item],
    chunk_size: int,
    known: _KnownBlocks | None = None,
) -> list[Sequence[_Item]]:
    """``prepared`` cut into set-based passes of at most ``chunk_size`` records, each
    reading at most :data:`PASS_BLOCK_ROWS` block-key members (unless a pass would then
    hold fewer than :data:`MIN_PASS_RECORDS`).

    A pass's working set (the members of its block keys, its candidates' features) is
    what sets the ingest's peak memory, and block keys gain members as the database grows
    (up to ``max_block_size``): with a fixed number of records per pass, the peak grew
    with the input (bench.ingest on SQLite, 500 Patients a pass: 216 MB at 25k Patients,
    ~240 MB at 100k). Cutting passes by the members they will read keeps it where a
    small database has it. Records still resolve in order and a pass decides exactly as
    one record at a time would, so where the cuts fall changes no decision.
    """
    if len(prepared) <= MIN_PASS_RECORDS:
        return list(chunks(prepared, chunk_size))
    if known is not None:  # the sizes of the page's keys, read with their members
        sizes = known.sizes
    else:
        keys = sorted({key for item in prepared for key in item.keys})
        sizes = dict(reads.block_sizes(keys))
    limit = settings.max_block_size
    passes: list[Sequence[_Item]] = []
    current: list[_Item] = []
    pass_keys: set[str] = set()
    rows = 0
    for item in prepared:
        new_keys = [key for key in item.keys if key not in pass_keys]
        cost = sum(n for n in (sizes.get(key, 0) for key in new_keys) if n <= limit)
        if current and (
            len(current) >= chunk_size
            or (rows + cost > PASS_BLOCK_ROWS and len(current) >= MIN_PASS_RECORDS)
        ):
            passes.append(current)
            current, pass_keys, rows = [], set(), 0
            cost = sum(n for n in (sizes.get(key, 0) for key in item.keys) if n <= limit)
        current.append(item)
        pass_keys.update(item.keys)
        rows += cost
    if current:
        passes.append(current)
    return passes


def _resolve_chunk(
    session: Session,
    settings: MatchSettings,
    model: MatchModel,
    items: Sequence[_Item],
    reads: Reads | None,
    known: _KnownBlocks | None,
    previous: Mapping[int, MatchFeatures],
) -> list[Resolution]:
    state = BatchState(
        session,
        settings,
        model,
        [(item.row.id, item.features, item.keys) for item in items],
        reads=reads,
        known=known,
    )
    _send_block_keys(session, state, items, known)
    try:
        return _decide_and_write(session, settings, state, items, previous)
    except BaseException:
        state.reads.background.abandon()  # the caller rolls back once the statement returned
        raise


def _send_block_keys(
    session: Session, state: BatchState, items: Sequence[_Item], known: _KnownBlocks | None
) -> None:
    """Start writing the pass's block keys (:attr:`Reads.background`): its stored
    records' keys are deleted, then every record's keys inserted, in one statement each,
    while this thread decides (nothing the pass reads afterwards reads ``block_key``; the
    next pass reads it after :func:`_write` waited for the statement).

    The most numerous rows of a pass (~14 per record: 360,784 at 25k Patients, 2.2 s of
    SQLite), in key order: the keys are hashes, so in record order each row lands on a
    random page of the key index (a page-cache miss apiece once the table outgrows the
    cache); sorted, neighbours share pages. On SQLite they travel as one JSON array read
    by ``json_each``, so the whole insert is one ``sqlite3_step`` without the GIL (an
    ``executemany`` takes the GIL back for each row, and waits for the deciding thread
    to give it up); it also costs less than the executemany (~65 vs ~70 ms of CPU per
    7000 rows into a 300k-row table, both indexes).

    The overlap needs a free core. 25k Patients, SQLite, load ~2 on this 2-core machine
    (other benchmarks running), interleaved: 54.3 and 44.9 s with the thread (0.35-0.54 s
    of the statements waited for; the deciding thread slowed by as much: MemoryResolver.add
    6.0-7.5 s instead of 5.3-5.4 s), 48.2 and 45.2 s with the same statements run in line:
    no wall time gained there; on idle cores the ~2 s of inserts is what it can save."""
    stored = state.stored
    rekeyed = [r for r in dict.fromkeys(item.row.id for item in items) if r in stored]
    keys: list[tuple[str, int]] = []
    for item in items:
        record_id = item.row.id
        keys.extend((key, record_id) for key in item.keys)
    keys.sort()
    if known is not None:
        if rekeyed:
            known.valid = False
        else:
            known.add(keys)
    if not keys and not rekeyed:
        return
    bulk = BulkWriter(session)
    connection = bulk.connection
    postgresql = bulk.postgresql
    deletes = []
    for chunk in chunks(rekeyed, IN_CHUNK):
        ids, listed = in_list(postgresql, chunk)
        deletes.append((f"DELETE FROM block_key WHERE source_record_id {ids}", (listed,)))
    inserted = None if postgresql or not keys else orjson.dumps(keys).decode()

    def write() -> None:
        for statement, parameters in deletes:
            connection.exec_driver_sql(statement, parameters)
        if inserted is not None:
            connection.exec_driver_sql(_INSERT_KEYS_SQLITE, (inserted,))
        elif keys:
            bulk.insert("block_key", ("key", "source_record_id"), keys)

    state.reads.background.run(write)


#: The SQLite insert of :func:`_send_block_keys`.
_INSERT_KEYS_SQLITE = (
    "INSERT INTO block_key (key, source_record_id) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)"
)


def _decide_and_write(
    session: Session,
    settings: MatchSettings,
    state: BatchState,
    items: Sequence[_Item],
    previous: Mapping[int, MatchFeatures],
) -> list[Resolution]:
    resolver = state.resolver
    writes = _Writes()
    linked: dict[int, tuple[str, float | None]] = {}  # linked by this batch: grade, score
    batch_keys: dict[int, list[str]] = {}
    resolutions: list[Resolution] = []
    for position, item in enumerate(items):
        record_id = item.row.id
        if record_id in linked or record_id in state.links:
            checked = None if record_id in linked else _checked_against_its_golden(state, item)
            if checked is None or not _no_longer_its_person(checked):
                before = previous.get(record_id)
                resolution = _refresh(state, writes, item, linked, batch_keys)
                if checked is not None and _in_doubt(checked, before, item.features):
                    _doubt(writes, position, resolution, checked)
                resolutions.append(resolution)
                continue
            _detach(state, writes, item, checked)
        found = state.ensure(item.keys, record_id)
        skipped = state.skipped_keys(item.keys)
        manual, blocked = state.steward(record_id)
        decision = resolver.add(
            item.features,
            record=record_id,
            keys=item.keys,
            manual_match=manual,
            no_match=blocked,
            allow_merge=state.allow_merge,
            found=found,
        )
        state.rekeyed(item.keys)
        batch_keys[record_id] = item.keys
        resolution = _record(state, writes, position, item, decision, skipped)
        linked[record_id] = (resolution.grade, resolution.score)
        resolutions.append(resolution)
        log.debug(
            "patient resolved",
            extra={
                "record_id": record_id,
                "golden_id": resolution.golden_id,
                "grade": resolution.grade,
                "skipped": skipped,
            },
        )
    state.parse_members(writes.touched)
    return _write(session, settings, state, writes, items, resolutions)


def _checked_against_its_golden(state: BatchState, item: _Item) -> Candidate | None:
    """A new version of a linked record, scored against the other active records of its
    golden record (its golden record as a candidate): is it still that person?
    (:func:`_no_longer_its_person`, :func:`_doubt`.)

    None, and the link stays unchecked, for a link a steward or the portal made, a
    steward's "match" decision, or the only record of its golden record (nothing to
    compare it with)."""
    record_id = item.row.id
    golden = state.golden_now(record_id)
    if golden is None or record_id in state.manual or state.steward(record_id)[0] is not None:
        return None
    resolver = state.resolver
    others = [
        Member(other, golden, resolver.features[other])
        for other in resolver.members.get(golden, [])[: MAX_MEMBERS_PER_GOLDEN + 1]
        if other != record_id and other in resolver.features
    ][:MAX_MEMBERS_PER_GOLDEN]
    if not others:
        return None
    [candidate] = score_candidates(resolver.model, resolver.settings, item.features, others)
    return candidate


def _no_longer_its_person(checked: Candidate) -> bool:
    """True when what keeps a new record out keeps this version out of its golden record:
    ``certainly-not``, or an automatic grade vetoed by a guard (another birth date, a
    twin's given name, another identifier of one system…). A ``possible`` version stays:
    not clear enough to split, but a steward is asked (:func:`_doubt`)."""
    if checked.grade == "possible":
        return False
    return checked.grade not in AUTO_GRADES or bool(checked.vetoes)


def _in_doubt(checked: Candidate, before: MatchFeatures | None, now: MatchFeatures) -> bool:
    """True when a version that stays (:func:`_no_longer_its_person`) is only a
    ``possible`` match for the rest of its golden record *and* its identity changed: a
    name, the birth date or the gender. A move (a new address and phone, a ``possible``
    match too for lack of corroboration) is what charts do; the same chart with another
    name or birth date and nothing else to vouch for it is for a steward to judge."""
    if checked.grade != "possible" or before is None:
        return False
    return (before.names, before.birth_date, before.gender) != (
        now.names,
        now.birth_date,
        now.gender,
    )


def _doubt(writes: _Writes, position: int, resolution: Resolution, checked: Candidate) -> None:
    """A linked record whose new version is only a ``possible`` match for the rest of its
    golden record stays linked, and a steward is asked about it: a ``possible-match``
    review item naming the record and its golden record, reason ``update-less-sure``.
    "match" confirms the link (a steward's link is never checked again), "no-match"
    takes the record out (:func:`mpi.admin.record_decision`)."""
    writes.doubts.append(
        (
            position,
            {
                "kind": "possible-match",
                "source_record_id": resolution.source_record_id,
                "golden_id": resolution.golden_id,
                "other_golden_id": None,
                "grade": checked.grade,
                "score": checked.score.total,
                "reason": UPDATE_LESS_SURE,
                "evidence": checked.evidence(),
            },
        )
    )


def _detach(state: BatchState, writes: _Writes, item: _Item, left: Candidate) -> None:
    """Take ``item``'s record out of the golden record it left (:func:`_no_longer_its_person`),
    so that it is decided like a new record: it may join another golden record or get
    its own (with a review item where it is a ``possible`` match). Its old link is
    replaced (:attr:`_Writes.detached`), the golden record it left is recomputed from
    the records that remain, and the link history keeps an ``unlink`` with the evidence."""
    record_id = item.row.id
    resolver = state.resolver
    golden = state.golden_now(record_id)
    assert golden is not None  # see _checked_against_its_golden
    for group in (resolver.members.get(golden), state.inactive.get(golden)):
        if group is not None and record_id in group:
            group.remove(record_id)
    resolver.golden_of.pop(record_id, None)
    state.unfile(record_id, state.old_keys.pop(record_id, []))
    writes.detached[record_id] = golden
    writes.touched[golden] = None
    grade, score = state.links[record_id][1:]
    writes.history.append(
        _history_row(
            action="unlink",
            source_record_id=record_id,
            golden_id=golden,
            grade=grade,
            score=score,
            actor="mpi",
            explanation={
                "reason": "update-no-longer-matches",
                "grade": left.grade,
                **left.evidence(),
            },
        )
    )
    writes.events.append(("patient.updated", golden, {"source_record_id": record_id}, True))


def _unasked(
    session: Session, doubts: Sequence[tuple[int, dict[str, Any]]]
) -> list[tuple[int, dict[str, Any]]]:
    """The ``doubts`` whose record has no open review item about its golden record yet
    (a record that keeps changing is asked about once)."""
    asked: set[tuple[int | None, str | None]] = set()
    records = [row["source_record_id"] for _, row in doubts]
    for chunk in chunks(records, IN_CHUNK):
        rows = session.execute(
            select(ReviewItem.source_record_id, ReviewItem.golden_id).where(
                ReviewItem.status == "open", ReviewItem.source_record_id.in_(chunk)
            )
        )
        asked.update((record, golden) for record, golden in rows)
    return [
        (position, row)
        for position, row in doubts
        if (row["source_record_id"], row["golden_id"]) not in asked
    ]


def _refresh(
    state: BatchState,
    writes: _Writes,
    item: _Item,
    linked: dict[int, tuple[str, float | None]],
    batch_keys: dict[int, list[str]],
) -> Resolution:
    """A new version of a record we know: new block keys, its golden record refreshed."""
    record_id = item.row.id
    index = state.resolver.index
    old = batch_keys.pop(record_id, None)
    if old is None:
        old = state.old_keys.pop(record_id, [])
    state.unfile(record_id, old)
    index.add(record_id, item.keys)
    state.rekeyed(item.keys)
    batch_keys[record_id] = item.keys
    state.resolver.features[record_id] = item.features
    golden = state.golden_now(record_id)
    assert golden is not None  # the record is linked
    grade, score = linked[record_id] if record_id in linked else state.links[record_id][1:]
    writes.touched[golden] = None
    writes.events.append(("patient.updated", golden, {"source_record_id": record_id}, True))
    return Resolution(record_id, golden, grade, score, False)


def _record(
    state: BatchState,
    writes: _Writes,
    position: int,
    item: _Item,
    decision: Decision,
    skipped: int,
) -> Resolution:
    """The rows one decision writes (link, history, merges, events, review items)."""
    record_id = item.row.id
    created = decision.golden_id is None
    golden_id = state.resolver.golden_of[record_id]
    explanation = dict(decision.explanation)
    if created:
        writes.created.add(golden_id)
        state.loaded.add(golden_id)  # all its members are in the resolver
        explanation.setdefault("reason", "no-candidate-linked")
    if skipped:
        explanation["skipped_block_keys"] = skipped
    grade = "certain" if created else decision.grade
    link = {
        "source_record_id": record_id,
        "golden_id": golden_id,
        "grade": grade,
        "score": decision.score,
        "method": decision.method,
        "explanation": explanation,
    }
    writes.links.append({**link, "flagged": decision.flagged})
    writes.history.append(_history_row(action="create" if created else "link", actor="mpi", **link))
    writes.touched[golden_id] = None
    for merge in state.pending:
        writes.merges.append(merge)
        writes.touched[merge.loser] = None
        writes.history.append(
            _history_row(
                action="merge",
                golden_id=merge.loser,
                other_golden_id=merge.survivor,
                actor="mpi",
                snapshot={"records": merge.records},
            )
        )
        writes.events.append(("patient.merged", merge.survivor, {"merged": merge.loser}, True))
    state.pending.clear()
    if created:
        writes.events.append(("patient.created", golden_id, {"source_record_id": record_id}, False))
    else:
        writes.events.append(("patient.updated", golden_id, {"source_record_id": record_id}, True))
    for spec in decision.reviews:
        writes.reviews.append(
            (
                position,
                {
                    "kind": spec.kind,
                    "source_record_id": record_id,
                    "golden_id": spec.golden_id,
                    "other_golden_id": spec.other_golden_id or (golden_id if created else None),
                    "grade": spec.grade,
                    "score": spec.score,
                    "reason": spec.reason,
                    "evidence": spec.evidence,
                },
            )
        )
    return Resolution(record_id, golden_id, grade, decision.score, created)


def _write(
    session: Session,
    settings: MatchSettings,
    state: BatchState,
    writes: _Writes,
    items: Sequence[_Item],
    resolutions: list[Resolution],
) -> list[Resolution]:
    """Everything the batch decided, one statement per table, at the driver level
    (:class:`store.bulk.BulkWriter`: each value encoded once, no per-row parameter
    processing); only the few review items, whose ids are returned, go through
    SQLAlchemy's insert. The block keys went out before (:func:`_send_block_keys`)."""
    state.reads.settle()
    resolver = state.resolver
    plans: list[GoldenPlan] = []
    for golden in writes.touched:
        new = golden in writes.created
        if golden in state.merged_into:
            plans.append(
                GoldenPlan(golden, [], new, status="merged", merged_into=state.merged_into[golden])
            )
        elif golden in resolver.members:
            plans.append(GoldenPlan(golden, list(resolver.members[golden]), new))
        else:  # a golden record that is not active (a record came back to it)
            plans.append(GoldenPlan(golden, None, new))
    known = dict(state.patients)
    known.update((item.row.id, item.patient) for item in items)
    versions = write_goldens(session, settings, plans, known=known)
    bulk = BulkWriter(session)
    if writes.merges:
        # Each loser's links go to its survivor's survivor at the end of the batch: one
        # statement for all (a set-based UPDATE on PostgreSQL sees no earlier merge's
        # rows; a survivor is never merged into a golden record merged away before).
        update_where(
            bulk,
            "link",
            ("golden_id",),
            ("golden_id",),
            [(state.survivor_of(merge.survivor), merge.loser) for merge in writes.merges],
        )
        for obj in list(session.identity_map.values()):
            if isinstance(obj, Link):
                session.expire(obj)
    if writes.detached:  # their new links are inserted below
        detached = set(writes.detached)
        for obj in list(session.identity_map.values()):
            # (read from the instance's state: an expired one would be loaded again)
            if isinstance(obj, Link) and obj.__dict__.get("source_record_id", 0) in detached:
                session.expunge(obj)
        for chunk in chunks(list(writes.detached)):
            session.execute(
                delete(Link)
                .where(Link.source_record_id.in_(chunk))
                .execution_options(synchronize_session=False)
            )
    now = bulk.timestamp(utcnow())
    bulk.insert(
        "link",
        _LINK_COLUMNS,
        [
            (
                row["source_record_id"],
                state.golden_now(row["source_record_id"]),
                row["grade"],
                row["score"],
                row["method"],
                row["flagged"],
                json_text(row["explanation"]),
                now,
                now,
            )
            for row in writes.links
        ],
        json_columns=_EXPLANATION_JSON,
    )
    bulk.insert(
        "link_history",
        _HISTORY_COLUMNS,
        [
            (
                *(row[column] for column in _HISTORY_COLUMNS[:8]),
                json_text(row["explanation"]),
                None if row["snapshot"] is None else json_text(row["snapshot"]),
                now,
            )
            for row in writes.history
        ],
        json_columns=_HISTORY_JSON,
    )
    if writes.detached:  # asked of a version that was someone else
        withdraw_review_items(
            session,
            {
                record: f"source record {record} changed into another person and left"
                f" golden record {golden}"
                for record, golden in writes.detached.items()
            },
        )
    if writes.doubts:
        writes.reviews.extend(_unasked(session, writes.doubts))
    first_review: dict[int, int] = {}
    if writes.reviews:
        ids = session.scalars(
            insert(ReviewItem).returning(ReviewItem.id, sort_by_parameter_order=True),
            [row for _, row in writes.reviews],
        ).all()
        for (position, _), review_id in zip(writes.reviews, ids, strict=True):
            first_review.setdefault(position, review_id)
    events = []
    for event, golden, payload, versioned in writes.events:
        extra = {"version": versions[golden]} if versioned and golden in versions else {}
        row = event_row(event, golden, **extra, **payload)
        events.append(
            (
                row["event_type"],
                row["aggregate_type"],
                row["aggregate_id"],
                json_text(row["payload"]),
                now,
                now,
                0,
            )
        )
    bulk.insert("outbox", OUTBOX_COLUMNS, events, json_columns=OUTBOX_JSON)
    _repoint_encounters(session, bulk, state, writes, items)
    if writes.merges:  # open items naming a loser now name its survivor
        settle_review_items(session, golden_ids=[merge.loser for merge in writes.merges])
    out: list[Resolution] = []
    for position, resolution in enumerate(resolutions):
        golden = state.golden_now(resolution.source_record_id) or resolution.golden_id
        out.append(
            Resolution(
                resolution.source_record_id,
                golden,
                resolution.grade,
                resolution.score,
                resolution.created,
                first_review.get(position),
            )
        )
    return out


def _repoint_encounters(
    session: Session,
    bulk: BulkWriter,
    state: BatchState,
    writes: _Writes,
    items: Sequence[_Item],
) -> None:
    """Encounters follow their patient: those of the batch's records and of the records
    of merged golden records point at the golden record each ended up in. Each one that
    moves is changed (its ``lastUpdated``: a new subject); the others are not written.

    Those that move from one golden record to another (a merge, a re-link) get an
    ``encounter.updated`` event: :func:`_moved_encounter_events`."""
    now = bulk.timestamp(write_time(session))
    rows = []
    seen: set[int] = set()
    #: (source id, patient resource id) -> its new golden record, for the patients of
    #: the batch that left a golden record, and those of merged golden records.
    relinked: dict[tuple[int, str], str] = {}
    for item in items:
        if item.row.id in seen:
            continue
        seen.add(item.row.id)
        golden = state.golden_now(item.row.id)
        if golden is not None:
            rows.append((golden, now, item.row.source_id, item.row.resource_id))
            before = state.links.get(item.row.id)
            if before is not None and before[0] != golden:
                relinked[(item.row.source_id, item.row.resource_id)] = golden
    moved: dict[int, str] = {}  # record of a merged golden record -> where it ended up
    for merge in writes.merges:
        golden = state.survivor_of(merge.survivor)
        for record in merge.records:
            if record not in seen:
                moved[record] = golden
    for record, source_id, resource_id in state.reads.patient_keys(sorted(moved)):
        rows.append((moved[record], now, source_id, resource_id))
        relinked[(source_id, resource_id)] = moved[record]
    events = _moved_encounter_events(state.reads, relinked, now)
    bulk.insert("outbox", OUTBOX_COLUMNS, events, json_columns=OUTBOX_JSON)
    update_where(
        bulk,
        "encounter",
        ("golden_id", "last_updated"),
        ("source_id", "patient_resource_id"),
        rows,
        changed=("golden_id",),
    )


def _moved_encounter_events(
    reads: Reads, relinked: dict[tuple[int, str], str], now: Any
) -> list[tuple[Any, ...]]:
    """``encounter.updated`` events (:data:`store.bulk.OUTBOX_COLUMNS` values) of the
    stored Encounters of ``relinked``'s patients that are about to move to another golden
    record: a subscriber to Encounters hears of the new subject. A pending Encounter (its
    Patient had not arrived) gets its event when the pipeline attaches it
    (:func:`sync.encounters.attach_waiting`). Read before the move, and only for patients
    that changed golden record, so a batch of new or unchanged patients reads nothing."""
    by_source: dict[int, list[str]] = {}
    for source_id, resource_id in relinked:
        by_source.setdefault(source_id, []).append(resource_id)
    events = []
    for source_id, patients in sorted(by_source.items()):
        for enc_id, patient, current, resource_id, status in reads.encounters_of_patients(
            source_id, sorted(patients)
        ):
            golden = relinked[(source_id, patient or "")]
            if current != golden and status != "pending":
                events.append(
                    outbox_values(
                        ENCOUNTER_UPDATED,
                        enc_id,
                        now,
                        golden_id=golden,
                        source_id=source_id,
                        resource_id=resource_id,
                    )
                )
    return events


#: Columns of the batch's driver-level inserts (see :func:`_write`), and their JSON ones.
_LINK_COLUMNS = (
    "source_record_id",
    "golden_id",
    "grade",
    "score",
    "method",
    "flagged",
    "explanation",
    "created_at",
    "updated_at",
)
_EXPLANATION_JSON = frozenset({"explanation"})
_HISTORY_COLUMNS = (
    "action",
    "source_record_id",
    "golden_id",
    "other_golden_id",
    "grade",
    "score",
    "method",
    "actor",
    "explanation",
    "snapshot",
    "at",
)
_HISTORY_JSON = frozenset({"explanation", "snapshot"})


def _history_row(**values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "action": None,
        "source_record_id": None,
        "golden_id": None,
        "other_golden_id": None,
        "grade": None,
        "score": None,
        "method": "AUTO",
        "actor": None,
        "explanation": {},
        "snapshot": None,
    }
    row.update(values)
    return row
