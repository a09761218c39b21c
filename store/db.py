"""Engines, sessions and the unit of work.

SQLite runs in WAL mode. Its automatic checkpoint runs inside the COMMIT that crosses
the threshold (https://www.sqlite.org/wal.html#automatic_checkpoint), which made
every few hundredth commit take 12 ms and more; so the threshold is raised to a safety
net (:data:`SQLITE_AUTOCHECKPOINT_PAGES`) and a daemon thread of the process
(:class:`WalCheckpointer`) checkpoints off the commit path, SQLite releasing the GIL
while it copies pages and syncs the files.

The log restarts from the beginning of its file only when a writer starts a transaction
while every frame is copied into the database and no reader needs one, or when a
``TRUNCATE`` checkpoint rewinds it; a ``TRUNCATE`` holds the writer lock while it
copies what is left and syncs the database (https://www.sqlite.org/pragma.html#pragma_wal_checkpoint).
A Patient transaction of a 25k-Patient sync writes ~30 MB of log (its inserts land on
pages all over the block-key, token and provenance indexes), which the thread, running
every second and truncating any log above 20 MB, copied under that lock at random
moments: the next transaction's first write waited 4.3-5.1 s in all (0.4 s with no
checkpoints at all), the lock being held 0.3-1.7 s at a time on this machine.

So the thread runs right after every commit (:meth:`WalCheckpointer.committed`, called
by the connections of :func:`make_engine`), while the writer reads and parses its next
page without a lock, and every :data:`WAL_CHECKPOINT_INTERVAL_S` otherwise. A
``PASSIVE`` checkpoint, which blocks no one, copies the last transaction; when it is
done before the next transaction writes, that writer restarts the log for free. Only a
log that has grown past :data:`WAL_TRUNCATE_BYTES` anyway (the copy lost the race a few
times in a row) is rewound by a ``TRUNCATE``, right after a commit, waiting at most
:data:`WAL_TRUNCATE_BUSY_MS` for the lock. 25k Patients, interleaved runs on a loaded
machine (load 4-9): the source-record insert that opens each transaction 4.3-5.1 s ->
0.7-1.5 s in all, 0-3 truncations instead of 27-31, the WAL file at most 60-91 MB.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from store.types import utcnow

log = logging.getLogger(__name__)

#: How long a SQLite writer waits for the lock before failing.
SQLITE_BUSY_TIMEOUT_S = 30
DEFAULT_POOL_SIZE = 10
#: WAL pages after which a commit checkpoints by itself (SQLite's default is 1000): only a
#: safety net when no background checkpointer runs (a forked worker, a stuck thread), above
#: what the checkpointer lets the log reach (:data:`WAL_TRUNCATE_BYTES` and the two
#: transactions written before it looks again: up to ~130 MB at 25k Patients, 60-91 MB
#: measured), or commits would pay the copy again.
SQLITE_AUTOCHECKPOINT_PAGES = 50_000
#: Seconds between two background checkpoints of a SQLite database file when no commit
#: of this process calls for one.
WAL_CHECKPOINT_INTERVAL_S = 1.0
#: Log (bytes of WAL in use, as the last checkpoint found it) beyond which the background
#: checkpoint rewinds it with a TRUNCATE. Above a Patient transaction's ~30 MB (25k
#: Patients), so a log that a PASSIVE checkpoint copied in time is restarted by the next
#: writer: with 20 MB every transaction was followed by a TRUNCATE, and the next one's
#: first write waited 1.4 s in all instead of 0.7-1.5 s.
WAL_TRUNCATE_BYTES = 64 * 1024 * 1024
#: How long a background TRUNCATE checkpoint waits for the writer lock and the readers.
WAL_TRUNCATE_BUSY_MS = 1000
#: Sizes of a WAL file's header and of each frame's header (before its page).
WAL_HEADER_BYTES = 32
WAL_FRAME_HEADER_BYTES = 24
#: The page size and checkpoint sequence number of a WAL file's header.
_WAL_HEADER = struct.Struct(">8xII")
#: Prepared statements the sqlite3 module keeps per connection (its default is 128).
#: When lookups by lists of ids had a placeholder per id, nearly every page prepared
#: statements of a new text, each holding the compiled program of a thousand
#: placeholders: at 128 the cache held ~75 MB more by the end of a 25k-Patient sync
#: (peak RSS 300 MB, 228 MB at 32). Those lists are JSON arrays now
#: (:func:`store.bulk.one_of`), one statement text per lookup.
SQLITE_CACHED_STATEMENTS = 32
#: Page size of a new SQLite database file (SQLite's default is 4096; a file keeps the
#: size it was created with: https://www.sqlite.org/pragma.html#pragma_page_size). A
#: source record (~2 KB of documents since the compact normalized form) left most of a
#: 4 KB page's remainder empty, and the MPI's indexes hold twice the keys a page. 25k
#: Patients, two interleaved rounds on a loaded machine (load 6-9): statement time
#: 16.7/32.1 s -> 15.7/27.6 s, the whole Patient phase 87.9/181.7 s -> 82.4/150.8 s, the
#: file 231 -> 211 MB; the WAL of a transaction grows (max WAL file 62/91 -> 75/75 MB).
SQLITE_PAGE_SIZE = 8192
#: Page cache per SQLite connection, in KiB (SQLite's default is 2 MiB). A batch of a
#: thousand Patients dirties pages all over the block-key, search-token and provenance
#: indexes (hashed keys, random golden ids), more than 2 MiB hold, so pages were evicted
#: and read again within the batch. 32 MiB took ~100 us per Patient off a 25k-Patient
#: sync (the index inserts and deletes: 230 -> 125 us of statement time), for a fixed
#: ~30 MB.
SQLITE_CACHE_KIB = 32 * 1024


#: Session settings of every PostgreSQL connection. psycopg prepares a statement run five
#: times, and PostgreSQL may then keep a *generic* plan, made without the parameters'
#: values. For the pipeline's ``= ANY(ids)`` lookups, planned from statistics taken before
#: a first load (see :class:`StatisticsRefresher`), that plan scanned every record of a
#: source in a secondary index and compared each with the whole array: 0.1-0.6 s a page.
#: Custom plans see each array; statements stay prepared, so only planning is repeated
#: (0.06-0.15 ms a statement). Measured and left out: ``jit=off`` (6k Patients, two
#: interleaved rounds: statement time 12.0/10.3 s with JIT, 11.6/10.6 s without).
PG_OPTIONS = "-c plan_cache_mode=force_custom_plan"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Before WAL mode, which writes the header of a new file and so fixes its page size.
    cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.close()


def _sqlite_pragmas_checkpointed(dbapi_connection: Any, record: Any) -> None:
    _sqlite_pragmas(dbapi_connection, record)
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
    cursor.close()


class _SQLiteConnection(sqlite3.Connection):
    """A sqlite3 connection that tells its database's checkpointer when it committed."""

    #: Called after every commit that ended a transaction (set by the connect listener).
    on_commit: Callable[[], None] | None = None

    def commit(self) -> None:
        open_transaction = self.in_transaction
        super().commit()
        if open_transaction and self.on_commit is not None:
            self.on_commit()


def _wal_header(path: str) -> tuple[int, int] | None:
    """The page size and checkpoint sequence number in the header of the WAL file of the
    database file ``path`` (big-endian at offsets 8 and 12,
    https://www.sqlite.org/fileformat2.html#walformat), or None while it holds none.
    The sequence changes whenever the log starts again from the beginning of the file.

    Only the WAL file is read here: SQLite's locks are POSIX locks on the database and
    ``-shm`` files, and closing any descriptor of a file drops every lock the process
    holds on it (https://www.sqlite.org/howtocorrupt.html#_posix_advisory_locks_canceled_by_a_separate_thread_doing_close_)."""
    try:
        with open(f"{path}-wal", "rb") as wal:
            header = wal.read(_WAL_HEADER.size)
    except OSError:
        return None
    if len(header) < _WAL_HEADER.size:
        return None
    page_size, sequence = _WAL_HEADER.unpack(header)
    return page_size, sequence


class WalCheckpointer:
    """A daemon thread checkpointing one SQLite database file in the background.

    It runs after every commit of the engines that share it (:meth:`committed`) and
    every ``interval_s`` otherwise; see the module docstring for what each run does."""

    def __init__(self, path: str, interval_s: float | None = None) -> None:
        self.path = path
        self.interval_s = WAL_CHECKPOINT_INTERVAL_S if interval_s is None else interval_s
        self.pid = os.getpid()
        self.checkpoints = 0
        #: Checkpoints that also truncated the log.
        self.truncations = 0
        #: Engines sharing this checkpointer (see :func:`make_engine`).
        self.engines = 0
        #: Bytes of log the last checkpoint found, and the WAL header's sequence number
        #: then (a log restarted since by a writer shows another one).
        self._log_bytes: int | None = None
        self._sequence: int | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait for the thread to end (after :meth:`stop`)."""
        self._thread.join(timeout_s)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def committed(self) -> None:
        """A transaction just committed: checkpoint now, while the writer holds no lock.

        Not in a forked child, whose copy of the thread does not run (nor in the
        middle of ``Event.set``, whose lock the fork may have copied taken)."""
        if os.getpid() == self.pid:
            self._wake.set()

    def _log_estimate(self, size: int) -> int:
        """Bytes of log in use when the last checkpoint ran (so one commit behind, at
        most): 0 if a writer restarted the log since, the WAL file's size (the log's upper
        bound) before the first checkpoint."""
        if self._log_bytes is None:
            return size
        header = _wal_header(self.path)
        if header is not None and header[1] != self._sequence:
            return 0
        return self._log_bytes

    def checkpoint(self) -> None:
        """One checkpoint, if the WAL holds anything: TRUNCATE once the log is larger than
        :data:`WAL_TRUNCATE_BYTES` (as :meth:`_log_estimate` knows it; PASSIVE if the
        writer lock does not come within :data:`WAL_TRUNCATE_BUSY_MS`), PASSIVE otherwise."""
        try:
            size = os.path.getsize(f"{self.path}-wal")
        except OSError:
            return
        if size == 0:
            return
        header = _wal_header(self.path)
        # mode=rw: a checkpoint never creates the database. A file deleted since (its
        # folder being removed, say) was made again, empty, by a plain connect.
        connection = sqlite3.connect(
            Path(self.path).as_uri() + "?mode=rw", timeout=SQLITE_BUSY_TIMEOUT_S, uri=True
        )
        try:
            if self._log_estimate(size) > WAL_TRUNCATE_BYTES:
                connection.execute(f"PRAGMA busy_timeout={WAL_TRUNCATE_BUSY_MS}")
                busy, frames, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                self.checkpoints += 1
                if not busy:
                    self.truncations += 1
                    # The next writer starts the log again, under the next sequence number.
                    self._sequence = None if header is None else header[1] + 1
                    self._log_bytes = 0
                    return
            else:
                _, frames, _ = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.checkpoints += 1
            # The sequence read before: a restart since then shows at the next look.
            if header is None:
                self._log_bytes = self._sequence = None
            else:
                page_size, self._sequence = header
                self._log_bytes = WAL_HEADER_BYTES + frames * (WAL_FRAME_HEADER_BYTES + page_size)
        finally:
            connection.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.checkpoint()
            except sqlite3.Error as exc:  # busy, or the file went away: try again later
                log.debug("background checkpoint skipped", extra={"error": type(exc).__name__})


#: The running checkpointer of each database file, shared by the engines of this process
#: on that file (a second thread would only find the checkpoint lock taken).
_checkpointers: dict[str, WalCheckpointer] = {}
#: Reentrant, and never waited for by a finalizer: an engine's finalizer
#: (:func:`_release_checkpointer`) runs whenever the garbage collector collects the
#: engine, in whichever thread allocates then: inside :func:`_shared_checkpointer` in the
#: same thread (the new checkpointer's ``Thread.__init__``), or in the checkpointer's new
#: thread while ``Thread.start`` in the holder waits for it to run. With a plain lock,
#: and then with a finalizer waiting for this one, tests hung in ``make_engine``.
_checkpointers_lock = threading.RLock()
#: Releases a finalizer could not apply (the lock was taken): the lock's holder applies
#: them before letting go of it, or the next one that takes it.
_released: list[WalCheckpointer] = []


def _apply_releases() -> None:
    """Apply the pending releases (the caller holds the lock)."""
    while _released:
        checkpointer = _released.pop()
        checkpointer.engines -= 1
        if checkpointer.engines <= 0:
            checkpointer.stop()
            if _checkpointers.get(checkpointer.path) is checkpointer:
                del _checkpointers[checkpointer.path]


def _shared_checkpointer(path: str) -> WalCheckpointer:
    with _checkpointers_lock:
        _apply_releases()
        checkpointer = _checkpointers.get(path)
        # None, a parent's, or one whose last engine was just collected (see the lock).
        if checkpointer is None or checkpointer.pid != os.getpid() or checkpointer.stopped:
            checkpointer = WalCheckpointer(path)
            _checkpointers[path] = checkpointer
        checkpointer.engines += 1
        _apply_releases()
        return checkpointer


def stop_checkpointers(timeout_s: float = 10.0) -> None:
    """Stop every background checkpointer of this process and wait for their threads,
    for a program about to remove its databases' folder: a checkpoint that opens a
    database while the folder is removed makes its ``-wal`` and ``-shm`` files again
    (seen in ``bench.ingest``: 'Directory not empty'). Engines made later start new ones."""
    with _checkpointers_lock:
        running = list(_checkpointers.values())
        _checkpointers.clear()
    for checkpointer in running:
        checkpointer.stop()
    for checkpointer in running:
        checkpointer.join(timeout_s)


def _release_checkpointer(checkpointer: WalCheckpointer) -> None:
    """An engine of ``checkpointer`` is gone (its finalizer): applied now unless another
    thread holds the lock, then by that thread (see :data:`_checkpointers_lock`)."""
    _released.append(checkpointer)
    if _checkpointers_lock.acquire(blocking=False):
        try:
            _apply_releases()
        finally:
            _checkpointers_lock.release()


def take_sqlite_write_lock(session: Session) -> None:
    """On SQLite, take the database's write lock now (``BEGIN IMMEDIATE``) rather than at
    the transaction's first write, so that nothing it reads before writing can be changed
    by another writer before it commits. It waits like any writer (the busy timeout). A
    transaction already open (it wrote) holds the lock already; other databases: nothing."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return
    dbapi = connection.connection.dbapi_connection
    if dbapi is not None and not dbapi.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


#: Every session of the database but the caller's with a transaction open, and the
#: earliest of their starts; with the database's clock (PostgreSQL).
_OPEN_TRANSACTIONS = text(
    "SELECT clock_timestamp(), min(xact_start) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND backend_type = 'client backend' AND xact_start IS NOT NULL"
)
#: How far :func:`settled_time` stays before the instant it finds: a change stamped
#: then counts as changed after it (``_since`` compares with ``>``; a manifest's
#: ``transactionTime`` is written to the millisecond).
_SETTLED_MARGIN = timedelta(milliseconds=1)


def write_time(session: Session) -> datetime:
    """The time the transaction of ``session`` stamps on what it changes and what clients
    follow with ``_since``: a golden record's ``lastUpdated`` and versions, an
    Encounter's ``lastUpdated``, an ``encounter.deleted`` event.

    It is read once the transaction holds what :func:`settled_time` watches for: on
    PostgreSQL it is the transaction's start (``now()``, which opens it); on SQLite, the
    clock read once the transaction holds the write lock. So a change stamped before
    an instant is either committed or in a transaction that was open at that instant.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # On the connection: the session's pending objects are not flushed for it.
        started = connection.execute(text("SELECT now()")).scalar()
        assert isinstance(started, datetime)
        return started.astimezone(UTC)
    take_sqlite_write_lock(session)
    return utcnow()


def settled_time(session: Session) -> datetime:
    """An instant before which every change stamped by :func:`write_time` is committed:
    what a read that starts after this call does not see then never appears later with
    an earlier stamp. A client that asks again with ``_since`` this instant misses
    nothing, however long the transactions that were writing took to commit.

    PostgreSQL: the earliest start of the transactions open in other sessions (the
    database's clock; a session idle in a transaction holds it back, which only makes
    the next ``_since`` repeat more), or now. SQLite: it waits for the write lock (the
    one writer has committed) and holds it until the caller's transaction ends.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        now, oldest = connection.execute(_OPEN_TRANSACTIONS).one()
        settled = now if oldest is None else min(now, oldest)
    else:
        take_sqlite_write_lock(session)
        settled = utcnow()
    settled = settled.astimezone(UTC)
    return settled.replace(microsecond=settled.microsecond // 1000 * 1000) - _SETTLED_MARGIN


def make_engine(url: str, *, background_checkpoint: bool = True, **kwargs: Any) -> Engine:
    """An engine for ``url``: SQLite in WAL mode with foreign keys, or PostgreSQL via psycopg 3.

    A SQLite database file is checkpointed by a background thread
    (``background_checkpoint``; see the module docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs.setdefault(
            "connect_args",
            {
                "timeout": SQLITE_BUSY_TIMEOUT_S,
                "cached_statements": SQLITE_CACHED_STATEMENTS,
                "factory": _SQLiteConnection,
            },
        )
        engine = create_engine(url, **kwargs)
        path = parsed.database
        if background_checkpoint and path and path != ":memory:" and not path.startswith("file:"):
            checkpointer = _shared_checkpointer(os.path.abspath(path))

            def connected(dbapi_connection: Any, record: Any) -> None:
                _sqlite_pragmas_checkpointed(dbapi_connection, record)
                if isinstance(dbapi_connection, _SQLiteConnection):
                    dbapi_connection.on_commit = checkpointer.committed

            event.listen(engine, "connect", connected)
            weakref.finalize(engine, _release_checkpointer, checkpointer)
        else:
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername == "postgresql":
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    kwargs.setdefault("connect_args", {"options": PG_OPTIONS})
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", DEFAULT_POOL_SIZE)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def unit_of_work(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits together on success and rolls back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


#: Tables a sync grows, whose planner statistics must follow a bulk load.
SYNC_TABLES = (
    "source_record",
    "encounter",
    "block_key",
    "link",
    "golden_patient",
    "golden_search_token",
    "field_provenance",
    "outbox",
)
#: Rows written between two looks at the tables by :class:`StatisticsRefresher`.
ANALYZE_EVERY_ROWS = 20_000
#: Rows written before a refresher's first look: two pages of a first load. Until then
#: the new tables have no column statistics at all, and the planner's defaults (0.5% of
#: rows for ``status = 'active'``) sent the MPI's member reads through the status index
#: (every active record of the database, filtered by the id list) and its block-key reads
#: through sequential scans, each read costing more than the one before; at the first
#: look after 20,000 rows a 5k-Patient load never had statistics. Analyzing tables of a
#: few thousand rows takes milliseconds; their statistics then scale with the table.
ANALYZE_FIRST_ROWS = 2_000
#: A table is analyzed again once the rows changed since its last ANALYZE pass this
#: fraction of its live rows (autovacuum's rule, with its default
#: ``autovacuum_analyze_scale_factor``), and :data:`ANALYZE_MIN_CHANGES`.
ANALYZE_CHANGED_FRACTION = 0.1
ANALYZE_MIN_CHANGES = 1000
#: Statistics target (``default_statistics_target``, PostgreSQL's default 100; ANALYZE
#: samples 300 rows per unit) of the tables whose statements find rows by a key or an id
#: list, and a partial index (the outbox's undelivered events): plans that need the row
#: and page counts and the few values of source, type and status, not a 30,000-row
#: sample. ANALYZE after a 25k-Patient load (78k Encounters), at 100 and at 20:
#: ``source_record`` 410-570 -> 85-95 ms, ``encounter`` 240-280 -> 36-56 ms, ``outbox``
#: 70-170 -> 32-44 ms; during the Encounter pages all three are analyzed at every look.
#: The MPI's tables keep the default: their statements filter on skewed values (common
#: names in block keys and search tokens), which the larger sample describes.
KEYED_TABLES_STATISTICS_TARGET = 20
KEYED_TABLES = frozenset({"source_record", "encounter", "outbox"})

#: Tables vacuumed as a load goes: their lookups are index-only scans (``block_key``'s
#: key index carries the record, migration 0005), which skip the heap only for pages the
#: visibility map marks all-visible, and only VACUUM sets those marks (autovacuum may be
#: off, and its insert threshold waits for 20% of the table to be new). A load mostly
#: adds rows, so each vacuum visits just the pages written since the last one (and an
#: index with nothing deleted is not scanned). ``PARALLEL 0``: the
#: workers PostgreSQL otherwise launches for the indexes' cleanup took most of the time
#: (28k new rows on a 390k-row table: 20-37 ms with them, 2-8 ms without).
#: ``SKIP_LOCKED``: a table another session is vacuuming or analyzing (a concurrent
#: sync's refresher) is skipped this time instead of waited for.
VACUUM_TABLES = ("block_key",)
#: Rows written between two vacuums of :data:`VACUUM_TABLES`: two pages of a load
#: (~28k block keys, ~230 heap pages).
VACUUM_EVERY_ROWS = 2_000

_TABLE_ACTIVITY = text(
    "SELECT relname, n_live_tup, n_mod_since_analyze FROM pg_stat_user_tables"
    " WHERE schemaname = current_schema() AND relname = ANY(:tables)"
)


@contextmanager
def _autocommit(engine: Engine) -> Iterator[Connection]:
    """A connection of ``engine`` in autocommit, outside any session's transaction (what
    VACUUM needs, and a background ANALYZE)."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


class StatisticsRefresher:
    """Keeps PostgreSQL's planner statistics current while a sync loads rows in bulk.

    A first load writes far faster than autovacuum's analyze keeps up with (and some
    installations, CI included, turn autovacuum off): planned from the statistics of a
    nearly empty table, the per-page lookups pick an index that filters a whole source,
    and every page costs more than the one before. So after every
    :data:`ANALYZE_EVERY_ROWS` rows written (the first time after
    :data:`ANALYZE_FIRST_ROWS`) it reads the tables' change counters
    (``pg_stat_user_tables``) and, as autovacuum would, runs ``ANALYZE`` on each of
    :data:`SYNC_TABLES` whose rows changed by :data:`ANALYZE_CHANGED_FRACTION` since its
    statistics were taken (it samples at most 30,000 rows per table and blocks no writer;
    https://www.postgresql.org/docs/current/sql-analyze.html). The tables a load does
    not touch are left alone: all of them were analyzed every time, and an Encounter load
    changes two of them. The tables whose rows are found by key are analyzed from a
    smaller sample (:data:`KEYED_TABLES_STATISTICS_TARGET`). SQLite plans without
    statistics here, so nothing runs there.

    After every :data:`VACUUM_EVERY_ROWS` rows it also runs ``VACUUM`` on
    :data:`VACUUM_TABLES` (on a connection of its own: VACUUM runs outside a transaction),
    so that their index-only scans stay index-only while the table grows.

    With ``background=True`` (the sync's refresher) a look runs in a daemon thread of its
    own, on a connection of its own in autocommit (``ANALYZE (SKIP_LOCKED)``: a table
    another session is analyzing or vacuuming is left to it), while the sync goes on
    with its next page; a look that comes due while the last one still runs waits for
    the page after. The planner takes the new statistics as soon as each ANALYZE
    commits, as it did before. 25k-Patient load on PostgreSQL: the looks had held the
    Encounter pages 1.2-1.3 s of ~9.2 s (a look during Encounter pages analyzes
    ``source_record``, ``encounter`` and ``outbox``, and whatever the Patient pages
    before it changed), the Patient pages ~0.6 s.

    Measured and left out: ``VACUUM (ANALYZE)`` of the tables with many dead rows (the
    MPI rewrites golden records, provenance and search tokens): 0.3-0.5 s per
    10k-Patient load and no difference in throughput outside this machine's noise;
    statistics target 0 on the JSON columns (nothing filters on them): ANALYZE of
    ``source_record``, ``encounter`` and ``outbox`` took as long.
    """

    def __init__(
        self,
        every_rows: int = ANALYZE_EVERY_ROWS,
        first_rows: int = ANALYZE_FIRST_ROWS,
        vacuum_every_rows: int = VACUUM_EVERY_ROWS,
        *,
        background: bool = False,
    ) -> None:
        self.every_rows = every_rows
        self.background = background
        #: The running background look, if any (see :meth:`wait`).
        self._look: threading.Thread | None = None
        #: Rows before the next look: the first comes early (:data:`ANALYZE_FIRST_ROWS`).
        self.due = min(first_rows, every_rows)
        self.pending = 0
        self.vacuum_every_rows = vacuum_every_rows
        #: Rows written since :data:`VACUUM_TABLES` were last vacuumed.
        self.unvacuumed = 0

    def wrote(self, session: Session, rows: int) -> bool:
        """Count ``rows`` just committed; once enough piled up, analyze the tables that
        changed enough (and every :attr:`vacuum_every_rows` rows, :meth:`vacuum`). True
        if it looked at them."""
        self.pending += rows
        if session.get_bind().dialect.name != "postgresql":
            return False
        self.unvacuumed += rows
        if self.unvacuumed >= self.vacuum_every_rows:
            self.unvacuumed = 0
            self.vacuum(session)
        if self.pending < self.due:
            return False
        if not self.background:
            self._reset()
            self._analyze(session.connection())
            session.commit()
            return True
        if self._look is not None and self._look.is_alive():
            return False  # the last look still runs: the next page looks again
        self._reset()
        engine = session.get_bind().engine
        self._look = threading.Thread(
            target=self._look_in_background, args=(engine,), name="statistics", daemon=True
        )
        self._look.start()
        return True

    def wait(self) -> None:
        """Wait for the background look, if one runs."""
        look = self._look
        if look is not None:
            look.join()

    def _reset(self) -> None:
        self.pending = 0
        self.due = self.every_rows

    def _look_in_background(self, engine: Engine) -> None:
        try:
            with _autocommit(engine) as conn:
                try:
                    self._analyze(conn, autocommit=True)
                finally:
                    conn.exec_driver_sql("RESET default_statistics_target")
        except Exception as exc:  # the database went away, or was busy: the next look
            log.warning("planner statistics not refreshed", extra={"error": type(exc).__name__})

    @staticmethod
    def _analyze(conn: Connection, *, autocommit: bool = False) -> None:
        """ANALYZE each of :data:`SYNC_TABLES` that changed enough, on ``conn``: in its
        transaction, the statistics target set for the transaction only; in autocommit
        (``SKIP_LOCKED``), set on the connection, which the caller resets."""
        activity = conn.execute(_TABLE_ACTIVITY, {"tables": list(SYNC_TABLES)}).all()
        option = "(SKIP_LOCKED) " if autocommit else ""
        scope = "" if autocommit else "LOCAL "
        analyzed = 0
        for table, live, changed in activity:
            if changed > max(ANALYZE_MIN_CHANGES, live * ANALYZE_CHANGED_FRACTION):
                target = KEYED_TABLES_STATISTICS_TARGET if table in KEYED_TABLES else "DEFAULT"
                conn.exec_driver_sql(f"SET {scope}default_statistics_target TO {target}")
                conn.exec_driver_sql(f"ANALYZE {option}{table}")
                analyzed += 1
        log.debug("planner statistics refreshed", extra={"count": analyzed})

    def vacuum(self, session: Session) -> None:
        """``VACUUM`` :data:`VACUUM_TABLES` on a connection of the session's engine (in
        autocommit: VACUUM cannot run in a transaction block), outside the session's
        transaction, whose own rows it could not mark visible yet."""
        with _autocommit(session.get_bind().engine) as conn:
            for table in VACUUM_TABLES:
                conn.exec_driver_sql(f"VACUUM (PARALLEL 0, SKIP_LOCKED) {table}")
        log.debug("tables vacuumed", extra={"count": len(VACUUM_TABLES)})
