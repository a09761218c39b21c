"""Engines, sessions and the unit of work.

SQLite runs in WAL mode. Its automatic checkpoint runs inside the COMMIT that crosses
the threshold (https://www.sqlite.org/wal.html#automatic_checkpoint), which made
every few hundredth commit take 12 ms and more; so the threshold is raised to a safety
net (:data:`SQLITE_AUTOCHECKPOINT_PAGES`) and a daemon thread of the process runs
``PRAGMA wal_checkpoint(PASSIVE)`` off the commit path every
:data:`WAL_CHECKPOINT_INTERVAL_S` (a PASSIVE checkpoint never blocks writers or readers;
SQLite releases the GIL while it copies pages).

A PASSIVE checkpoint copies the log into the database but never rewinds it: the log
restarts from its beginning only when a writer starts while no reader needs it, which a
process whose writers are always inside a transaction rarely sees. The log then grew to
the safety net (~80 MB) and the commit that crossed it paid a full checkpoint
(95-300 ms). So once the log passes :data:`WAL_TRUNCATE_BYTES` the thread runs a
``TRUNCATE`` checkpoint instead, waiting at most :data:`WAL_TRUNCATE_BUSY_MS` for the
writer lock (https://www.sqlite.org/pragma.html#pragma_wal_checkpoint): the frames are
already copied, so it holds the lock only to copy the last ones and truncate the file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

#: How long a SQLite writer waits for the lock before failing.
SQLITE_BUSY_TIMEOUT_S = 30
DEFAULT_POOL_SIZE = 10
#: WAL pages after which a commit checkpoints by itself (SQLite's default is 1000): only a
#: safety net when no background checkpointer runs (a forked worker, a stuck thread).
SQLITE_AUTOCHECKPOINT_PAGES = 20_000
#: Seconds between two background PASSIVE checkpoints of a SQLite database file.
WAL_CHECKPOINT_INTERVAL_S = 1.0
#: Size of the WAL file beyond which the background checkpoint truncates it.
WAL_TRUNCATE_BYTES = 20 * 1024 * 1024
#: How long a background TRUNCATE checkpoint waits for the writer lock and the readers.
WAL_TRUNCATE_BUSY_MS = 1000
#: Prepared statements the sqlite3 module keeps per connection (its default is 128).
#: When lookups by lists of ids had a placeholder per id, nearly every page prepared
#: statements of a new text, each holding the compiled program of a thousand
#: placeholders: at 128 the cache held ~75 MB more by the end of a 25k-Patient sync
#: (peak RSS 300 MB, 228 MB at 32). Those lists are JSON arrays now
#: (:func:`store.bulk.one_of`), one statement text per lookup.
SQLITE_CACHED_STATEMENTS = 32
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
#: Custom plans see each array; statements stay prepared, so only planning is repeated.
PG_OPTIONS = "-c plan_cache_mode=force_custom_plan"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
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


class WalCheckpointer:
    """A daemon thread checkpointing one SQLite database file in the background."""

    def __init__(self, path: str, interval_s: float = WAL_CHECKPOINT_INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self.pid = os.getpid()
        self.checkpoints = 0
        #: Checkpoints that also truncated the log.
        self.truncations = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def checkpoint(self) -> None:
        """One checkpoint, if the WAL holds anything: TRUNCATE once the log is larger than
        :data:`WAL_TRUNCATE_BYTES` (PASSIVE if the writer lock does not come within
        :data:`WAL_TRUNCATE_BUSY_MS`), PASSIVE otherwise."""
        try:
            size = os.path.getsize(f"{self.path}-wal")
        except OSError:
            return
        if size == 0:
            return
        connection = sqlite3.connect(self.path, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            if size > WAL_TRUNCATE_BYTES:
                connection.execute(f"PRAGMA busy_timeout={WAL_TRUNCATE_BUSY_MS}")
                busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                if not busy:
                    self.truncations += 1
                    self.checkpoints += 1
                    return
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        finally:
            connection.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.checkpoint()
            except sqlite3.Error as exc:  # busy, or the file went away: try again later
                log.debug("background checkpoint skipped", extra={"error": type(exc).__name__})


def make_engine(url: str, *, background_checkpoint: bool = True, **kwargs: Any) -> Engine:
    """An engine for ``url``: SQLite in WAL mode with foreign keys, or PostgreSQL via psycopg 3.

    A SQLite database file is checkpointed by a background thread
    (``background_checkpoint``; see the module docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs.setdefault(
            "connect_args",
            {"timeout": SQLITE_BUSY_TIMEOUT_S, "cached_statements": SQLITE_CACHED_STATEMENTS},
        )
        engine = create_engine(url, **kwargs)
        path = parsed.database
        if background_checkpoint and path and path != ":memory:" and not path.startswith("file:"):
            checkpointer = WalCheckpointer(os.path.abspath(path))
            event.listen(engine, "connect", _sqlite_pragmas_checkpointed)
            weakref.finalize(engine, checkpointer.stop)
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

_TABLE_ACTIVITY = text(
    "SELECT relname, n_live_tup, n_mod_since_analyze FROM pg_stat_user_tables"
    " WHERE schemaname = current_schema() AND relname = ANY(:tables)"
)


class StatisticsRefresher:
    """Keeps PostgreSQL's planner statistics current while a sync loads rows in bulk.

    A first load writes far faster than autovacuum's analyze keeps up with (and some
    installations, CI included, turn autovacuum off): planned from the statistics of a
    nearly empty table, the per-page lookups pick an index that filters a whole source,
    and every page costs more than the one before. So after every
    :data:`ANALYZE_EVERY_ROWS` rows written it reads the tables' change counters
    (``pg_stat_user_tables``) and, as autovacuum would, runs ``ANALYZE`` on each of
    :data:`SYNC_TABLES` whose rows changed by :data:`ANALYZE_CHANGED_FRACTION` since its
    statistics were taken (it samples at most 30,000 rows per table and blocks no writer;
    https://www.postgresql.org/docs/current/sql-analyze.html). The tables a load does
    not touch are left alone: all of them were analyzed every time, and an Encounter load
    changes two of them. The tables whose rows are found by key are analyzed from a
    smaller sample (:data:`KEYED_TABLES_STATISTICS_TARGET`). SQLite plans without
    statistics here, so nothing runs there.

    Measured and left out: ``VACUUM (ANALYZE)`` of the tables with many dead rows (the
    MPI rewrites golden records, provenance and search tokens): 0.3-0.5 s per
    10k-Patient load and no difference in throughput outside this machine's noise.
    """

    def __init__(self, every_rows: int = ANALYZE_EVERY_ROWS) -> None:
        self.every_rows = every_rows
        self.pending = 0

    def wrote(self, session: Session, rows: int) -> bool:
        """Count ``rows`` just committed; once enough piled up, analyze the tables that
        changed enough. True if it looked at them."""
        self.pending += rows
        if self.pending < self.every_rows or session.get_bind().dialect.name != "postgresql":
            return False
        self.pending = 0
        activity = session.execute(_TABLE_ACTIVITY, {"tables": list(SYNC_TABLES)}).all()
        analyzed = 0
        for table, live, changed in activity:
            if changed > max(ANALYZE_MIN_CHANGES, live * ANALYZE_CHANGED_FRACTION):
                target = KEYED_TABLES_STATISTICS_TARGET if table in KEYED_TABLES else "DEFAULT"
                session.execute(text(f"SET LOCAL default_statistics_target TO {target}"))
                session.execute(text(f"ANALYZE {table}"))
                analyzed += 1
        session.commit()
        log.debug("planner statistics refreshed", extra={"count": analyzed})
        return True
