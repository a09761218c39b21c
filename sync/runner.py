"""Source runs: one sync of one source, page by page, resumable after any crash.

A run (a ``sync_run`` row) walks the source's resource types in order. Each
*chunk* opens the source's stream at the committed cursor, ingests up to
``max_pages`` pages and commits each page together with the cursor after it and
the run's counters. A crash (even ``kill -9``) therefore loses at most the page in
flight, which the next chunk reads again from the committed cursor; the content
hash makes the re-read a no-op, so nothing is lost or doubled.

Only one chain of chunks works on a source at a time. The chain holds a *token*
stored in the run; a new trigger for a running source (beat, ``askonce sync``, a
push gap) takes the run over with a fresh token and the old chain stops at its
next chunk. On PostgreSQL every chunk holds a transaction-scoped advisory lock on
the source, so a takeover and a chunk never interleave.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from connectors import (
    PermanentError,
    Source,
    SourceConfig,
    TransientError,
    build_source,
)
from mpi import MatchSettings
from mpi.storage import PATIENT_CONFIRMED_FLAG
from store import CursorRepository, SourceRepository, SyncRunRepository
from store.db import StatisticsRefresher, take_sqlite_write_lock
from store.errors import transient_database_error
from store.models import Source as SourceRow
from store.models import SyncRun
from store.types import utcnow
from sync import catchup
from sync.context import DEFAULT_REGION, TaskContext, bound_task_context
from sync.patients import DEFAULT_PATIENT_BATCH, PatientOptions
from sync.pipeline import IngestResult, ingest_page, split_page
from sync.records import has_records

log = logging.getLogger(__name__)

#: This process's count of rows written since PostgreSQL last analyzed the sync tables.
_statistics = StatisticsRefresher(background=True)


def wait_for_statistics() -> None:
    """Wait for the planner-statistics look this process's syncs left running, if any
    (before dropping or closing their database: a look cut off logs a warning)."""
    _statistics.wait()


SourceFactory = Callable[[SourceConfig], Source]
#: Called with (source_id, run_id, token) to schedule the next chunk; None runs in-process.
Requeue = Callable[[int, int, str], None]
PageCallback = Callable[[SyncRun, IngestResult], None]

RUN_RUNNING = "running"
RUN_OK = "ok"
RUN_FAILED = "failed"
#: Pages per chunk of a queued run: one, so a worker is never busy for long.
DEFAULT_PAGES_PER_CHUNK = 1
#: First key of the PostgreSQL advisory lock pair that serializes a source's chunks.
SOURCE_LOCK_CLASS = 0x41534B  # "ASK"
#: Source config key holding the SHA-256 of the token a push sender presents (see sync.intake).
INTAKE_TOKEN_KEY = "intake_token_sha256"  # noqa: S105 - a config key, not a secret
#: Portal source config key: the client id of the consumer (the portal) whose submitted forms
#: the source receives (see sync.forms).
PORTAL_CLIENT_KEY = "client_id"
#: Source config keys read by the pipeline; every other key goes to the connector.
PIPELINE_CONFIG_KEYS = frozenset(
    {
        "default_region",
        "mrn_system",
        "patient_batch",
        INTAKE_TOKEN_KEY,
        # survivorship (mpi.storage): values from this source were confirmed by the patient
        PATIENT_CONFIRMED_FLAG,
        # portal sources (sync.forms)
        PORTAL_CLIENT_KEY,
        # hl7v2 sources (sync.hl7intake)
        "timezone",
        "identifier_systems",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
    }
)
#: Length of the cursor fingerprints kept in a run to notice a stream that came back around.
CURSOR_FINGERPRINT_CHARS = 16
#: Fingerprints of a type's latest page cursors kept in a run (see :class:`CursorTrail`).
CURSOR_TRAIL_WINDOW = 64
#: CPython's young-generation collection threshold while pages are ingested (default 700).
#: A page's objects are freed by reference counting when it is done, and the count of new
#: objects falls with them, so above a page's working set (100k-200k container objects at
#: 25k Patients) a young collection almost never runs: 25k Patients on SQLite, GC time of
#: the ingesting thread (gc.callbacks, thread CPU time) at 10k: 500 young + 4 middle
#: collections, 1.57-1.86 s of ~23 s; 50k: 72, 1.98 s; 100k: 39, 1.62 s; 200k: 5 (all of
#: them outside pages), 0.12-0.5 s; 500k: 5, 0.08 s. Peak RSS unchanged (218-235 MB).
#: Cyclic garbage, which reference counting does not free, still raises the count, so it
#: is collected once this many objects of it (or of a page's working set) pile up.
INGEST_GC_THRESHOLD = 250_000
#: Young collections between two middle-generation ones while pages are ingested (default
#: 10): a batch's working set survives the young collections, and each middle one walked
#: all of it again (~40 ms apiece at 25k Patients; 96 -> 54 us of GC per Patient).
INGEST_GC_THRESHOLD_1 = 100


class SyncError(Exception):
    """Base of the errors of :mod:`sync` (see the tree in ``sync/__init__.py``)."""


class SourceUnavailableError(SyncError):
    """The source does not exist or is disabled."""


class DatabaseUnavailableError(SyncError):
    """The database failed in a way worth retrying (see :mod:`store.errors`): the chunk's
    transaction was rolled back, and the run resumes from its last committed page."""


@dataclass
class ChunkResult:
    """What one chunk did; ``done`` is True when the run finished (or was taken over)."""

    source_id: int
    run_id: int
    token: str
    done: bool
    status: str
    pages: int = 0
    result: IngestResult = field(default_factory=IngestResult)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "run_id": self.run_id,
            "done": self.done,
            "status": self.status,
            "pages": self.pages,
            **self.result.as_dict(),
        }


def source_config(source: SourceRow) -> SourceConfig:
    """The connector configuration of a stored source (pipeline keys left out)."""
    options = {k: v for k, v in (source.config or {}).items() if k not in PIPELINE_CONFIG_KEYS}
    return SourceConfig(
        kind=source.kind,  # type: ignore[arg-type]
        base_url=source.base_url,
        auth=dict(source.auth or {"kind": "none"}),
        resource_types=list(source.resource_types),
        options=options,
    )


def patient_options(
    source: SourceRow,
    default_region: str = DEFAULT_REGION,
    match_settings: MatchSettings | None = None,
) -> PatientOptions:
    """The pipeline options of a stored source, over the process-wide defaults."""
    config = source.config or {}
    return PatientOptions(
        match_settings=match_settings,
        default_region=str(config.get("default_region") or default_region),
        mrn_system=config.get("mrn_system"),
        batch_size=int(config.get("patient_batch") or DEFAULT_PATIENT_BATCH),
    )


def bound_patient_options(source: SourceRow, default_region: str | None = None) -> PatientOptions:
    """A source's options over this process's defaults: those of the bound task context
    (its default region and match settings), if the process bound one, else the built-in
    ones. For work outside a sync run (push intake, MLLP, reprocessing)."""
    context = bound_task_context()
    if context is None:
        return patient_options(source, default_region or DEFAULT_REGION)
    return patient_options(source, default_region or context.default_region, context.match_settings)


def lock_source(session: Session, source_id: int) -> None:
    """Serialize writers of one source's records, until the transaction ends: what it
    reads from here on (an Encounter's Patient, a Patient's candidates, the records a
    page replaces) no other writer of the source changes before it commits. PostgreSQL:
    the source's advisory lock. SQLite, which has one writer: the database's write lock,
    taken now. Taken at the first write instead, it would let an Encounter pushed while
    its Patient was being taken in find no Patient, and wait, pending, for a Patient
    whose transaction looked for waiting Encounters before it was stored. Hold it for
    database work only: on SQLite every other writer waits."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:cls, :key)"),
            {"cls": SOURCE_LOCK_CLASS, "key": source_id},
        )
    else:
        take_sqlite_write_lock(session)


def _fingerprint(cursor: str | None) -> str:
    return hashlib.sha256((cursor or "").encode()).hexdigest()[:CURSOR_FINGERPRINT_CHARS]


@dataclass
class CursorTrail:
    """The page cursors a run has gone through for one type, to notice a stream that came
    back to one of them (a server whose ``next`` links loop, an incremental re-read that
    ends where it began) and stop it instead of reading forever.

    Kept in ``run.detail`` and rewritten with every page, so it has a fixed size: the
    fingerprints of the latest :data:`CURSOR_TRAIL_WINDOW` cursors (a loop that short is
    caught at its first repeat) and an *anchor*, moved to the current cursor after 1,
    2, 4, 8... pages (Brent's cycle detection): a longer loop of L pages entered after P
    is caught within 3L + 2P pages (the test: L = 70, caught at page 198), each re-read
    page skipped by its content hash.
    The whole list it replaces made each page's run update grow with the run (a
    quadratic rewrite of ``run.detail`` over a long run).
    """

    recent: list[str] = field(default_factory=list)
    anchor: str | None = None
    pages: int = 0
    #: The cursor the chunk started from (not kept: it is the last page's, or a past run's).
    start: str | None = None

    @classmethod
    def of(cls, detail: dict[str, Any] | None, rtype: str, start: str | None) -> CursorTrail:
        kept = ((detail or {}).get("seen") or {}).get(rtype)
        if isinstance(kept, list):  # a run started before the trail had a fixed size
            kept = {"recent": kept, "pages": len(kept)}
        kept = kept if isinstance(kept, dict) else {}
        return cls(
            recent=[str(f) for f in kept.get("recent") or []][-CURSOR_TRAIL_WINDOW:],
            anchor=kept.get("anchor"),
            pages=int(kept.get("pages") or 0),
            start=_fingerprint(start),
        )

    def knows(self, cursor: str | None) -> bool:
        fingerprint = _fingerprint(cursor)
        return fingerprint in (self.start, self.anchor) or fingerprint in self.recent

    def add(self, cursor: str | None) -> None:
        fingerprint = _fingerprint(cursor)
        self.recent.append(fingerprint)
        del self.recent[:-CURSOR_TRAIL_WINDOW]
        self.pages += 1
        if self.pages & (self.pages - 1) == 0:  # a power of two
            self.anchor = fingerprint

    def as_json(self) -> dict[str, Any]:
        return {"recent": list(self.recent), "anchor": self.anchor, "pages": self.pages}


def running_run(session: Session, source_id: int) -> SyncRun | None:
    """The source's run in progress, if any (the newest, should there be several)."""
    return session.scalar(
        select(SyncRun)
        .where(SyncRun.source_id == source_id, SyncRun.status == RUN_RUNNING)
        .order_by(SyncRun.id.desc())
        .limit(1)
    )


def start_or_resume(session: Session, source_id: int, *, full: bool = False) -> tuple[SyncRun, str]:
    """Take over the source's running run with a new token, or start a new one (no commit).

    A full run clears the source's cursors, so every type is read from the start.
    """
    lock_source(session, source_id)
    source = SourceRepository(session).get(source_id)
    if not source.enabled:
        raise SourceUnavailableError(f"source {source_id} is disabled")
    run = running_run(session, source_id)
    token = uuid.uuid4().hex
    if run is None or full:
        if run is not None:
            finish_run(run, RUN_FAILED, reason="superseded by a full run")
        run = SyncRunRepository(session).start(source_id, full=full)
        run.detail = {"types": list(source.resource_types), "index": 0, "seen": {}}
        if full:
            CursorRepository(session).clear(source_id)
    detail = dict(run.detail or {})
    detail["token"] = token
    detail["heartbeat"] = utcnow().isoformat()
    run.detail = detail
    session.flush()
    log.debug("sync run claimed", extra={"source_id": source_id, "run_id": run.id})
    return run, token


def finish_run(run: SyncRun, status: str, *, reason: str | None = None) -> None:
    run.status = status
    run.finished_at = utcnow()
    if reason:
        run.detail = {**(run.detail or {}), "reason": reason}


def _claimed_run(session: Session, run_id: int, token: str) -> SyncRun | None:
    """The run, if it is still running under ``token`` (the caller holds the source lock)."""
    run = session.get(SyncRun, run_id, populate_existing=True)
    if run is None or run.status != RUN_RUNNING or (run.detail or {}).get("token") != token:
        return None
    return run


def _account(run: SyncRun, rtype: str, trail: CursorTrail, page: IngestResult) -> None:
    run.pages += 1
    run.resources += page.resources
    run.quarantined += page.quarantined
    run.skipped += page.skipped
    detail = dict(run.detail or {})
    counts = dict(detail.get("counts") or {})
    per_type = dict(counts.get(rtype) or {})
    for key, value in page.as_dict().items():
        per_type[key] = per_type.get(key, 0) + value
    counts[rtype] = per_type
    seen = dict(detail.get("seen") or {})
    seen[rtype] = trail.as_json()
    detail.update(counts=counts, seen=seen, heartbeat=utcnow().isoformat())
    run.detail = detail


def _advance(run: SyncRun) -> None:
    detail = dict(run.detail or {})
    detail["index"] = int(detail.get("index", 0)) + 1
    run.detail = detail


def run_chunk(
    context: TaskContext,
    source_id: int,
    run_id: int,
    token: str,
    *,
    max_pages: int | None = DEFAULT_PAGES_PER_CHUNK,
    source_factory: SourceFactory = build_source,
    on_page: PageCallback | None = None,
    default_region: str | None = None,
) -> ChunkResult:
    """Ingest up to ``max_pages`` pages of the run's current type (None: to the stream's end).

    Each page commits with its cursor. :class:`~connectors.TransientError` propagates
    (the task retries the chunk); a :class:`~connectors.PermanentError` fails the run.
    """
    chunk = ChunkResult(source_id, run_id, token, done=False, status=RUN_RUNNING)
    with context.session_factory() as session:
        lock_source(session, source_id)
        run = _claimed_run(session, run_id, token)
        if run is None:
            chunk.done, chunk.status = True, "superseded"
            return chunk
        source_row = SourceRepository(session).get(source_id)
        types: list[str] = list((run.detail or {}).get("types") or source_row.resource_types)
        index = int((run.detail or {}).get("index", 0))
        if index >= len(types):
            finish_run(run, RUN_OK)
            chunk.done, chunk.status = True, RUN_OK
            if catchup.settle(session, run) and SourceRepository(session).get(source_id).enabled:
                # A gap came in after this run started: the next run starts now, in the
                # same transaction (the caller goes on with it, or requeues it).
                follow, follow_token = start_or_resume(session, source_id)
                chunk.done, chunk.run_id, chunk.token = False, follow.id, follow_token
            session.commit()
            log.info("sync run finished", extra={"source_id": source_id, "run_id": run_id})
            return chunk
        rtype = types[index]
        options = patient_options(
            source_row, default_region or context.default_region, context.match_settings
        )
        cursor = CursorRepository(session).get(source_id, rtype)
        trail = CursorTrail.of(run.detail, rtype, cursor)
        session.commit()  # nothing written: the lock is not held while the source answers
        connector: Source | None = None
        try:
            connector = source_factory(source_config(source_row))
            with ingest_gc():
                exhausted = _ingest_stream(
                    session,
                    connector,
                    run,
                    rtype,
                    cursor,
                    trail,
                    options,
                    max_pages,
                    chunk,
                    on_page,
                )
            if chunk.status == "superseded":
                chunk.done = True
                return chunk
            if exhausted:
                lock_source(session, source_id)
                if _claimed_run(session, run_id, token) is None:
                    chunk.done, chunk.status = True, "superseded"
                    return chunk
                _advance(run)
            session.commit()
        except TransientError as exc:
            session.rollback()
            _record_error(session, run_id, token, exc, fatal=False)
            raise
        except PermanentError as exc:
            session.rollback()
            if not _record_error(session, run_id, token, exc, fatal=True):
                # The run is still running: the retry meets the error again and fails it.
                raise _database_unavailable(exc) from exc
            chunk.done, chunk.status = True, RUN_FAILED
            return chunk
        except Exception as exc:
            # Not the source's fault (a database hiccup, a bug): count it, keep the run
            # resumable from the committed cursor, and let the caller see the error. A
            # lost connection, a deadlock or a lock timeout is retried by the task.
            session.rollback()
            _record_error(session, run_id, token, exc, fatal=False)
            if transient_database_error(exc):
                raise _database_unavailable(exc) from exc
            raise
        finally:
            if connector is not None:
                connector.close()
    return chunk


@contextmanager
def database_retries() -> Iterator[None]:
    """Raise a database failure worth retrying as a :class:`DatabaseUnavailableError`,
    the class the tasks retry with backoff; any other error passes unchanged."""
    try:
        yield
    except DatabaseUnavailableError:
        raise
    except Exception as exc:
        if transient_database_error(exc):
            raise _database_unavailable(exc) from exc
        raise


def _database_unavailable(exc: Exception) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"the database failed ({type(exc).__name__}); the run resumes from its last committed page"
    )


@contextmanager
def ingest_gc() -> Iterator[None]:
    """The garbage collector's settings while pages are ingested, restored afterwards.

    A page of Patients allocates hundreds of thousands of container objects (parsed
    resources, features, rows), so CPython's cycle collector, with its default
    thresholds, ran ~1000 young and several full collections per 3,000 Patients, each
    full one walking every object of the process (the imported modules, pydantic
    schemas and SQLAlchemy caches included): about a fifth of the Patient CPU time.
    While the block runs, the objects that exist when it starts are frozen
    (:func:`gc.freeze`: left out of every collection, and given back to the collector
    when the block ends, so nothing is kept for good) and a young collection waits for
    :data:`INGEST_GC_THRESHOLD` new objects instead of 700, and a middle one for
    :data:`INGEST_GC_THRESHOLD_1` young ones instead of 10 (a process that froze its
    objects itself, e.g. before forking workers, keeps them frozen). Memory is
    unchanged: the pipeline's objects are freed by reference counting; only cyclic
    garbage waits a little longer for its collection.
    """
    thresholds = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0  # else the process froze its objects itself
    if freeze:
        gc.freeze()
    gc.set_threshold(
        max(thresholds[0], INGEST_GC_THRESHOLD),
        max(thresholds[1], INGEST_GC_THRESHOLD_1),
        thresholds[2],
    )
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if freeze:
            gc.unfreeze()


def _ingest_stream(
    session: Session,
    connector: Source,
    run: SyncRun,
    rtype: str,
    cursor: str | None,
    trail: CursorTrail,
    options: PatientOptions,
    max_pages: int | None,
    chunk: ChunkResult,
    on_page: PageCallback | None,
) -> bool:
    """Ingest pages; True when the type is done (stream ended or came back to a known cursor).

    A source with no record of the type yet (its first sync) has its lines decoded
    without a look-up of their digests (see :func:`sync.pipeline.ingest_page`)."""
    lines_stored = has_records(session, run.source_id, rtype)
    stream = connector.stream_lines(rtype, cursor)
    try:
        for page in stream:
            # Locked once the page is read, so that no writer waits while the source answers.
            lock_source(session, run.source_id)
            if _claimed_run(session, run.id, chunk.token) is None:
                chunk.status = "superseded"
                return False
            result = IngestResult()
            parts = split_page(page)
            for number, part in enumerate(parts, start=1):
                result.add(
                    ingest_page(
                        session, run.source_id, part, options=options, lines_stored=lines_stored
                    )
                )
                if number < len(parts):
                    # Records only; the cursor commits with the last part. A crash in
                    # between re-reads the page, and the stored parts are skipped by hash.
                    session.commit()
                    lock_source(session, run.source_id)
                    if _claimed_run(session, run.id, chunk.token) is None:
                        chunk.status = "superseded"
                        return False
            looped = page.cursor is None or trail.knows(page.cursor)
            trail.add(page.cursor)
            _account(run, rtype, trail, result)
            session.commit()
            _statistics.wrote(session, result.stored + result.quarantined)
            chunk.pages += 1
            chunk.result.add(result)
            if on_page is not None:
                on_page(run, result)
            if looped:
                return True  # no cursor to go on from, or a loop (incremental overlap re-read)
            if max_pages is not None and chunk.pages >= max_pages:
                return False
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return True


def _record_error(
    session: Session, run_id: int, token: str, exc: Exception, *, fatal: bool
) -> bool:
    """Count the error in the run (and fail it if ``fatal``) and log it by type; False
    when the database could not take the record.

    Best effort: a connection that is still gone (or a database still locked) must not
    replace the error being handled with its own."""
    try:
        _count_error(session, run_id, token, exc, fatal=fatal)
    except Exception as record_exc:
        if not transient_database_error(record_exc):
            raise
        session.rollback()
        log.warning(
            "sync chunk failed; its error could not be recorded",
            extra={"run_id": run_id, "reason": type(exc).__name__},
        )
        return False
    return True


def _count_error(session: Session, run_id: int, token: str, exc: Exception, *, fatal: bool) -> None:
    run = _claimed_run(session, run_id, token)
    if run is None:
        return
    run.errors += 1
    detail = dict(run.detail or {})
    detail["last_error"] = {
        "type": type(exc).__name__,
        "url": getattr(exc, "url", None),
        "status_code": getattr(exc, "status_code", None),
        "at": utcnow().isoformat(),
    }
    run.detail = detail
    if fatal:
        finish_run(run, RUN_FAILED)
    session.commit()
    log.warning(
        "sync chunk failed",
        extra={
            "source_id": run.source_id,
            "run_id": run_id,
            "reason": type(exc).__name__,
            "status_code": getattr(exc, "status_code", None),
        },
    )


def run_source(
    context: TaskContext,
    source_id: int,
    *,
    run_id: int | None = None,
    token: str | None = None,
    full: bool = False,
    requeue: Requeue | None = None,
    max_pages: int | None = DEFAULT_PAGES_PER_CHUNK,
    source_factory: SourceFactory = build_source,
    on_page: PageCallback | None = None,
    default_region: str | None = None,
) -> ChunkResult:
    """Start (or resume) a run of ``source_id`` and work on it.

    With ``requeue`` (a queued worker) one chunk is done and the next is scheduled
    through ``requeue``; without it (embedded mode, tests) chunks run here until the
    run is finished. A database failure worth retrying is raised as a
    :class:`DatabaseUnavailableError`.
    """
    if run_id is None or token is None:
        with database_retries(), context.session_factory() as session:
            run, token = start_or_resume(session, source_id, full=full)
            run_id = run.id
            session.commit()
    total = ChunkResult(source_id, run_id, token, done=False, status=RUN_RUNNING)
    while True:
        chunk = run_chunk(
            context,
            source_id,
            run_id,
            token,
            max_pages=max_pages,
            source_factory=source_factory,
            on_page=on_page,
            default_region=default_region,
        )
        total.pages += chunk.pages
        total.result.add(chunk.result)
        total.done, total.status = chunk.done, chunk.status
        if chunk.done:
            return total
        run_id, token = chunk.run_id, chunk.token  # a catch-up run may follow a finished one
        total.run_id, total.token = run_id, token
        if requeue is not None:
            requeue(source_id, run_id, token)
            return total


def run_chunked(
    context: TaskContext,
    source_id: int,
    *,
    stop: Callable[[], bool] = lambda: False,
    source_factory: SourceFactory = build_source,
    on_chunk: Callable[[ChunkResult], None] | None = None,
) -> tuple[ChunkResult, int]:
    """Start (or resume) a run and do it chunk by chunk in this process, as a worker's
    chain of tasks would (the embedded scheduler; tests): the last chunk's result and
    how many chunks ran. ``stop`` is asked between two chunks: a run stopped so resumes
    from its cursor at its next start."""
    chunks: list[tuple[int, int, str]] = []
    chunk = run_source(
        context, source_id, requeue=lambda *a: chunks.append(a), source_factory=source_factory
    )
    count = 1
    while chunks and not stop():
        if on_chunk is not None:
            on_chunk(chunk)
        _, run_id, token = chunks.pop()
        chunk = run_source(
            context,
            source_id,
            run_id=run_id,
            token=token,
            requeue=lambda *a: chunks.append(a),
            source_factory=source_factory,
        )
        count += 1
    if on_chunk is not None:
        on_chunk(chunk)
    return chunk, count
