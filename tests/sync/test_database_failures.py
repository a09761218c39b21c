"""A database that fails for a moment (a lost connection, a locked file, a deadlock, a lock
timeout) costs a run a retry, never a record; a database error that would fail again the
same way (a bug, a constraint) is not retried.

Every failure here is a real one, from the real SQLite or PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, func, make_url, select, text
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from connectors import Page
from store import make_engine, make_session_factory
from store.errors import transient_database_error, unreachable_database
from store.models import Encounter, SourceRecord, SyncRun
from sync import DatabaseUnavailableError, TaskContext, run_source
from sync import runner as runner_module
from sync.runner import SOURCE_LOCK_CLASS
from sync.tasks import run_source as run_source_task
from tests.sync.helpers import (
    ScriptedSource,
    add_source,
    embedded,
    patient,
    write_ndjson,
)
from tests.sync.test_runner import ENCOUNTER_PAGES, PATIENT_PAGES

#: How long the runner's connections wait for a lock in these tests.
SHORT_WAIT_S = 0.3


def _sqlite_path(engine: Engine) -> str:
    path = engine.url.database
    assert path
    return path


def locked_sqlite_error(path: str) -> sqlite3.OperationalError:
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        writer = sqlite3.connect(path, timeout=0)
        try:
            writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            return exc
        finally:
            writer.close()
    finally:
        holder.rollback()
        holder.close()
    raise AssertionError("the second writer was not refused")


def test_sqlite_errors_a_retry_can_cure_are_told_from_the_others(tmp_path: Path) -> None:
    path = str(tmp_path / "classify.db")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    locked = locked_sqlite_error(path)
    assert locked.sqlite_errorname.startswith("SQLITE_BUSY")
    assert transient_database_error(locked)
    # Through SQLAlchemy, as the pipeline meets it: a second engine with a short wait.
    engine = make_engine(f"sqlite:///{path}", connect_args={"timeout": SHORT_WAIT_S})
    holder = sqlite3.connect(path, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError) as waited, engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        holder.rollback()
        holder.close()
    assert transient_database_error(waited.value)
    # Wrapped by a caller: the cause still counts.
    try:
        raise RuntimeError("page failed") from waited.value
    except RuntimeError as wrapped:
        assert transient_database_error(wrapped)
    # A bug or bad data fails the same way every time: not transient.
    with pytest.raises(OperationalError) as missing, engine.begin() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not transient_database_error(missing.value)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(IntegrityError) as duplicate, engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    assert not transient_database_error(duplicate.value)
    assert not transient_database_error(ValueError("not a database error"))
    # Reachable all along: none of these says the database is unavailable.
    for reachable in (locked, waited.value, missing.value, duplicate.value):
        assert unreachable_database(reachable) is None
    engine.dispose()
    # A file that cannot be opened (its folder is missing), or is not a database.
    nowhere = make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    with pytest.raises(OperationalError) as unopenable, nowhere.connect():
        pass
    assert unreachable_database(unopenable.value) == "unable to open database file"
    nowhere.dispose()
    (tmp_path / "text.db").write_text("not a database, but long enough to have a header" * 4)
    garbled = make_engine(f"sqlite:///{tmp_path / 'text.db'}")
    with pytest.raises(Exception) as not_a_database, garbled.connect() as conn:
        conn.execute(text("SELECT * FROM sqlite_master"))
    assert unreachable_database(not_a_database.value) == "file is not a database"
    garbled.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    # No pool: a connection's session settings (the lock timeout below) end with it.
    engine = make_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    yield engine
    engine.dispose()


def test_postgresql_errors_a_retry_can_cure_are_told_from_the_others(
    pg_engine: Engine, pg_url: str
) -> None:
    # A lock timeout (55P03).
    with pg_engine.connect() as holder, pg_engine.connect() as waiter:
        holder.execute(text("BEGIN"))
        holder.execute(text("SELECT pg_advisory_xact_lock(424242)"))
        waiter.execute(text("SET lock_timeout = '100ms'"))
        with pytest.raises(OperationalError) as timed_out:
            waiter.execute(text("SELECT pg_advisory_lock(424242)"))
        holder.execute(text("COMMIT"))
    assert getattr(timed_out.value.orig, "sqlstate", None) == "55P03"
    assert transient_database_error(timed_out.value)

    # A deadlock (40P01): each of two transactions waits for the other's lock.
    errors: list[BaseException] = []
    with pg_engine.connect() as first, pg_engine.connect() as second:
        first.execute(text("BEGIN"))
        second.execute(text("BEGIN"))
        first.execute(text("SELECT pg_advisory_xact_lock(1)"))
        second.execute(text("SELECT pg_advisory_xact_lock(2)"))

        def cross(conn: Any, key: int) -> None:
            try:
                conn.execute(text(f"SELECT pg_advisory_xact_lock({key})"))
            except OperationalError as exc:
                errors.append(exc)
                conn.execute(text("ROLLBACK"))

        thread = threading.Thread(target=cross, args=(first, 2))
        thread.start()
        cross(second, 1)
        thread.join(timeout=30)
        for conn in (first, second):
            conn.execute(text("ROLLBACK"))
    assert len(errors) == 1
    deadlock = errors[0]
    assert isinstance(deadlock, OperationalError)
    assert getattr(deadlock.orig, "sqlstate", None) == "40P01"
    assert transient_database_error(deadlock)

    # A connection the server dropped (an administrator, a restart, a failover).
    with pg_engine.connect() as victim, pg_engine.connect() as admin:
        pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(OperationalError) as dropped:
            victim.execute(text("SELECT 1"))
    assert transient_database_error(dropped.value)

    # A refused connection, from the driver itself.
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
    assert transient_database_error(refused.value)
    reason = unreachable_database(refused.value)
    assert reason is not None and reason.endswith("Connection refused"), reason
    assert unreachable_database(dropped.value) is not None
    # A server that is up but knows no such database.
    with pytest.raises(psycopg.OperationalError) as unknown:
        psycopg.connect(
            make_url(pg_url)
            .set(drivername="postgresql", database="askonce_no_such_db")
            .render_as_string(hide_password=False)
        )
    assert 'database "askonce_no_such_db" does not exist' in str(
        unreachable_database(unknown.value)
    )
    # Reachable: a lock timeout and a deadlock are not an unavailable database.
    assert unreachable_database(timed_out.value) is None
    assert unreachable_database(deadlock) is None

    # Bugs and bad data are not.
    with pg_engine.connect() as conn, pytest.raises(ProgrammingError) as missing:
        conn.execute(text("SELECT * FROM no_such_table"))
    with pg_engine.connect() as conn, pytest.raises(DataError) as not_a_number:
        conn.execute(text("SELECT 'x'::int"))
    assert not transient_database_error(missing.value)
    assert not transient_database_error(not_a_number.value)
    assert unreachable_database(missing.value) is None
    assert unreachable_database(not_a_number.value) is None


class DatabaseHiccup(ScriptedSource):
    """Serves its pages; right before a chosen page, ``hiccup`` makes the database fail."""

    def __init__(self, hiccup: Callable[[], None], before_page: int) -> None:
        super().__init__({"Patient": PATIENT_PAGES, "Encounter": ENCOUNTER_PAGES})
        self.hiccup = hiccup
        self.before_page = before_page
        self.served = 0

    def stream(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        for page in super().stream(resource_type, cursor):
            if self.served == self.before_page:
                self.hiccup()
            self.served += 1
            yield page


def _counts(session: Session, source_id: int) -> tuple[int, int, int]:
    records = session.scalar(
        select(func.count()).select_from(SourceRecord).where(SourceRecord.source_id == source_id)
    )
    distinct = session.scalar(
        select(func.count(func.distinct(SourceRecord.resource_id))).where(
            SourceRecord.source_id == source_id
        )
    )
    attached = session.scalar(
        select(func.count()).select_from(Encounter).where(Encounter.golden_id.is_not(None))
    )
    return records or 0, distinct or 0, attached or 0


def test_a_run_the_database_fails_under_is_retried_and_loses_nothing(
    engine: Engine, db_url: str
) -> None:
    """PostgreSQL: every connection of the database is terminated in the middle of the
    run, while the runner waits for its source's lock in a transaction (one terminated
    between transactions is replaced unnoticed: the pool pings it first). SQLite: another
    process holds the file's write lock past the runner's busy timeout, and still holds it
    when the run tries to record its error."""
    terminator: threading.Thread | None = None
    if engine.dialect.name == "postgresql":
        runner_engine = make_engine(db_url)
        blocker = engine.connect()

        def release() -> None:
            blocker.invalidate()  # terminated with the others, which freed its lock
            blocker.close()

        def terminate() -> None:
            with engine.connect() as admin:
                for _ in range(1000):  # the runner's lock request, waiting
                    if admin.scalar(
                        text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND NOT granted"
                        )
                    ):
                        break
                    threading.Event().wait(0.01)
                admin.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )

        def hiccup() -> None:
            nonlocal terminator
            blocker.execute(
                text("SELECT pg_advisory_lock(:cls, :key)"),
                {"cls": SOURCE_LOCK_CLASS, "key": source_id},
            )
            terminator = threading.Thread(target=terminate)
            terminator.start()
    else:
        runner_engine = make_engine(db_url, connect_args={"timeout": SHORT_WAIT_S})
        holder = sqlite3.connect(_sqlite_path(engine), timeout=5)

        def hiccup() -> None:
            holder.execute("BEGIN IMMEDIATE")

        def release() -> None:
            holder.rollback()

    factory = make_session_factory(runner_engine)
    context = TaskContext(engine=runner_engine, session_factory=factory)
    source_id = add_source(factory)
    failing = DatabaseHiccup(hiccup, before_page=2)
    try:
        with pytest.raises(DatabaseUnavailableError) as failed:
            run_source(context, source_id, max_pages=None, source_factory=lambda _c: failing)
        assert transient_database_error(failed.value)
        assert isinstance(failed.value.__cause__, OperationalError)
    finally:
        if terminator is not None:
            terminator.join(30)
        release()
    with factory() as session:
        run = session.scalars(select(SyncRun)).one()
        assert run.status == "running"  # resumable, not failed
        assert run.pages == 2
        assert _counts(session, source_id) == (6, 6, 0)
        if engine.dialect.name == "postgresql":  # recorded; SQLite was still locked then
            assert run.errors == 1
            assert run.detail["last_error"]["type"] == "OperationalError"
    healthy = ScriptedSource({"Patient": PATIENT_PAGES, "Encounter": ENCOUNTER_PAGES})
    resumed = run_source(context, source_id, max_pages=None, source_factory=lambda _c: healthy)
    assert resumed.status == "ok"
    assert healthy.opened[0] == ("Patient", "2")  # from the last committed page
    with factory() as session:
        assert session.scalars(select(SyncRun.status)).all() == ["ok"]  # the same run
        assert _counts(session, source_id) == (16, 16, 4)
    if engine.dialect.name != "postgresql":
        holder.close()
    runner_engine.dispose()


def test_a_permanent_error_that_cannot_be_recorded_is_retried_not_lost(
    session_factory: sessionmaker[Session], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source's 403 fails the run; if the database cannot take that record right then,
    the chunk is retried (and meets the 403 again) instead of leaving a run that looks alive
    with nothing to resume it."""
    from connectors import PermanentError

    source_id = add_source(session_factory)
    context = TaskContext(engine=engine, session_factory=session_factory)
    broken = ScriptedSource({"Patient": PATIENT_PAGES}, fail_after=0, error=PermanentError("403"))
    real_count = runner_module._count_error
    lost = _real_lost_connection_error(engine)

    def database_gone(*args: Any, **kwargs: Any) -> None:
        raise lost

    monkeypatch.setattr(runner_module, "_count_error", database_gone)
    with pytest.raises(DatabaseUnavailableError):
        run_source(context, source_id, max_pages=None, source_factory=lambda _c: broken)
    monkeypatch.setattr(runner_module, "_count_error", real_count)
    failed = run_source(context, source_id, max_pages=None, source_factory=lambda _c: broken)
    assert failed.status == "failed"
    with session_factory() as session:
        assert session.scalars(select(SyncRun.status)).all() == ["failed"]


def _real_lost_connection_error(engine: Engine) -> BaseException:
    """A real "database went away" error of the backend under test."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as victim, engine.connect() as admin:
            pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            try:
                victim.execute(text("SELECT 1"))
            except OperationalError as exc:
                return exc
        raise AssertionError("the terminated connection still answered")
    return locked_sqlite_error(_sqlite_path(engine))


def test_the_task_retries_a_chunk_the_database_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Celery task (in-process, as embedded mode runs it) retries a chunk that met a
    database failure and finishes the run; a failure a retry cannot cure is not retried."""
    runtime, folder = embedded(tmp_path)
    source_id = add_source(runtime.session_factory, base_url=str(folder), config={"page_size": 2})
    locked = locked_sqlite_error(str(tmp_path / "embedded.db"))
    real_ingest = runner_module.ingest_page
    calls: list[int] = []

    def flaky_ingest(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the second page, once
            raise OperationalError("INSERT", {}, locked)
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(runner_module, "ingest_page", flaky_ingest)
    # apply(throw=False): Celery runs an eager task's retries in-process, as a worker would.
    result = run_source_task.apply(kwargs={"source_id": source_id}, throw=False).get()
    assert (result["status"], result["stored"]) == ("ok", 3)  # the pages after the retry
    with runtime.session_factory() as session:
        run = session.scalars(select(SyncRun)).one()
        assert (run.status, run.errors) == ("ok", 1)
        assert session.scalar(select(func.count()).select_from(SourceRecord)) == 5
    # A bug is not a hiccup: it fails the task at once, and the run waits for a fix.
    calls.clear()

    with sqlite3.connect(str(tmp_path / "embedded.db")) as conn:
        try:
            conn.execute("SELECT * FROM no_such_table")
        except sqlite3.OperationalError as exc:
            missing = exc

    def buggy_ingest(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise OperationalError("SELECT", {}, missing)

    monkeypatch.setattr(runner_module, "ingest_page", buggy_ingest)
    write_ndjson(folder, "Patient", [patient(f"p{n}", f"Name{n}") for n in range(5)])
    failed = run_source_task.apply(kwargs={"source_id": source_id, "full": True}, throw=False)
    assert failed.state == "FAILURE"
    assert isinstance(failed.result, OperationalError)
    assert len(calls) == 1  # the first page's ingest, which raised, was not tried again
    with runtime.session_factory() as session:
        newest = session.scalars(select(SyncRun).order_by(SyncRun.id.desc())).first()
        assert newest is not None and (newest.status, newest.errors) == ("running", 1)
