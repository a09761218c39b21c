"""The hot read path: a golden Patient by id, without a thread-pool hop on PostgreSQL.

On PostgreSQL the read is one prepared ``SELECT`` on a psycopg
:class:`~psycopg_pool.AsyncConnectionPool` (autocommit, no BEGIN/ROLLBACK), run
on the event loop; the stored JSON comes back as text and goes out as is. On
SQLite (the embedded mode) the same query runs through SQLAlchemy in the
thread pool. The status rules (404, 410, ``replaced-by``) are
:func:`gateway.operations.read.stored_from_row` either way.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from gateway.operations.read import StoredResource, check_id, read_patient, stored_from_row

log = logging.getLogger(__name__)

#: Connections per worker process kept open for reads, and the most it opens.
READ_POOL_MIN = 2
READ_POOL_MAX = 8
READ_SQL = "SELECT version, status, resource::text FROM golden_patient WHERE id = %s"


def _libpq_url(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class PatientReader:
    """Reads the current version of a golden Patient (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pool: AsyncConnectionPool | None = None
        if engine.dialect.name == "postgresql":
            self.pool = AsyncConnectionPool(
                _libpq_url(engine),
                min_size=READ_POOL_MIN,
                max_size=READ_POOL_MAX,
                kwargs={"autocommit": True},
                open=False,
                name="askonce-reads",
            )

    async def open(self) -> None:
        if self.pool is not None:
            await self.pool.open()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def read(self, golden_id: str) -> StoredResource:
        check_id("Patient", golden_id)
        # The pool opens with the app's lifespan; served without one, the engine answers.
        if self.pool is not None and not self.pool.closed:
            try:
                async with self.pool.connection() as conn:
                    cursor = await conn.execute(READ_SQL, (golden_id,))
                    row = await cursor.fetchone()
            except psycopg.OperationalError:
                log.warning("async read failed; using the engine", extra={"golden_id": golden_id})
            else:
                if row is None or row[1] == "active":
                    return stored_from_row(golden_id, row, survivor=None)
        # SQLite, a merged record (needs the survivor chain) or a pool failure.
        return await run_in_threadpool(self._read_with_engine, golden_id)

    def _read_with_engine(self, golden_id: str) -> StoredResource:
        with self.engine.connect() as conn:
            return read_patient(conn.execution_options(isolation_level="AUTOCOMMIT"), golden_id)
