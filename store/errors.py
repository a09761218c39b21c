"""Which database failures are worth trying again.

A sync chunk, a source's removal or an API request that fails because the database
said "not now" (the connection was lost or refused, the server is restarting, a
deadlock or a serialization conflict chose this transaction as its victim, a lock or a
statement timed out, SQLite's file was locked past the busy timeout) will very likely
succeed if it is simply run again: its transaction was rolled back whole, and every
caller here commits its work with its cursor. Everything else (a constraint violated,
a missing table, a syntax error, a value the server cannot store) fails again the same
way, and retrying it only hides a bug.

PostgreSQL reports the class in the SQLSTATE
(https://www.postgresql.org/docs/current/errcodes-appendix.html); SQLite in its
extended result code (``sqlite3.Error.sqlite_errorname``, Python 3.11+).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import psycopg
from sqlalchemy.exc import DBAPIError

#: SQLSTATE classes and codes after which the same transaction, run again, can succeed.
TRANSIENT_SQLSTATE_PREFIXES = (
    "08",  # connection exception: lost, refused, not established
    "40",  # transaction rollback: serialization failure, deadlock detected
    "53",  # insufficient resources: too many connections, out of memory, disk full
    "57P",  # operator intervention: admin or crash shutdown, cannot connect now
)
TRANSIENT_SQLSTATES = frozenset(
    {
        "55P03",  # lock_not_available: lock_timeout expired
        "57014",  # query_canceled: statement_timeout expired
    }
)
#: SQLite result codes of a database that another connection holds (past the busy timeout).
TRANSIENT_SQLITE_CODES = frozenset({"SQLITE_BUSY", "SQLITE_LOCKED"})


#: SQLite result codes of a database file that cannot be opened as one.
UNOPENABLE_SQLITE_CODES = frozenset({"SQLITE_CANTOPEN", "SQLITE_NOTADB"})


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from, each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def transient_database_error(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) is a database failure worth retrying."""
    return any(_transient(current) for current in error_chain(exc))


def unreachable_database(exc: BaseException) -> str | None:
    """Why the database could not be reached, when that is what ``exc`` (or what it was
    raised from) says: a server that is down, refuses the connection, does not know the
    database or the role, or went away; a SQLite file that cannot be opened. None for any
    other failure. The reason is the driver's first line, which names the server and the
    database, never a row."""
    for current in error_chain(exc):
        if isinstance(current, psycopg.OperationalError) and (
            current.sqlstate is None or current.sqlstate.startswith(("08", "57P"))
        ):
            first = (str(current).splitlines() or [type(current).__name__])[0]
            return first.removeprefix("connection failed: ").strip()
        if _sqlite_code_in(current, UNOPENABLE_SQLITE_CODES):
            return str(current)
    return None


def _sqlite_code_in(exc: BaseException, codes: frozenset[str]) -> bool:
    """True for a SQLite error of one of ``codes``, extended codes too (SQLITE_BUSY_SNAPSHOT,
    SQLITE_LOCKED_SHAREDCACHE...)."""
    if not isinstance(exc, sqlite3.Error):
        return False
    name = getattr(exc, "sqlite_errorname", None) or ""
    return any(name == code or name.startswith(code + "_") for code in codes)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        return exc.orig is not None and _transient(exc.orig)
    sqlstate = getattr(exc, "sqlstate", None)  # psycopg's errors
    if isinstance(sqlstate, str):
        return sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith(TRANSIENT_SQLSTATE_PREFIXES)
    if isinstance(exc, sqlite3.Error):
        return _sqlite_code_in(exc, TRANSIENT_SQLITE_CODES)
    # psycopg raises OperationalError without a SQLSTATE when the connection is gone.
    return isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None
