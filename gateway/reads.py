"""The hot read path: a golden Patient by id, without a thread-pool hop on PostgreSQL.

On PostgreSQL the read runs on the event loop over a psycopg
:class:`~psycopg_pool.AsyncConnectionPool` (autocommit, no BEGIN/ROLLBACK), and
reads that arrive in the same event-loop tick share one prepared
``SELECT … WHERE id = ANY(…)`` (the DataLoader pattern): under load one round
trip answers many requests. The stored JSON comes back as text and goes out as
is. On
SQLite (the embedded mode) the same query runs through SQLAlchemy in the
thread pool. The status rules (404, 410, ``replaced-by``) are
:func:`gateway.operations.read.stored_from_row` either way.
"""

from __future__ import annotations

import asyncio
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
BATCH_SQL = "SELECT id, version, status, resource::text FROM golden_patient WHERE id = ANY(%s)"
#: Most ids fetched by one batched query; more waiting reads start another batch.
MAX_BATCH = 256
Row = tuple[int, str, str]


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
        self._waiting: dict[str, list[asyncio.Future[Row | None]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

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
                row = await self._load(golden_id)
            except psycopg.OperationalError:
                log.warning("async read failed; using the engine", extra={"golden_id": golden_id})
            else:
                if row is None or row[1] == "active":
                    return stored_from_row(golden_id, row, survivor=None)
        # SQLite, a merged record (needs the survivor chain) or a pool failure.
        return await run_in_threadpool(self._read_with_engine, golden_id)

    async def _load(self, golden_id: str) -> Row | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Row | None] = loop.create_future()
        self._waiting.setdefault(golden_id, []).append(future)
        if not self._scheduled or len(self._waiting) >= MAX_BATCH:
            self._scheduled = True
            # After the current tick, so every read already on the loop joins the batch.
            loop.call_soon(self._start_batch)
        return await future

    def _start_batch(self) -> None:
        batch, self._waiting, self._scheduled = self._waiting, {}, False
        if batch:
            task = asyncio.ensure_future(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: dict[str, list[asyncio.Future[Row | None]]]) -> None:
        assert self.pool is not None
        try:
            async with self.pool.connection() as conn:
                cursor = await conn.execute(BATCH_SQL, (list(batch),))
                rows = {r[0]: (r[1], r[2], r[3]) for r in await cursor.fetchall()}
        except Exception as exc:  # handed to every waiting read, which decides
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for golden_id, futures in batch.items():
            for future in futures:
                if not future.done():  # a read whose client went away is cancelled
                    future.set_result(rows.get(golden_id))

    def _read_with_engine(self, golden_id: str) -> StoredResource:
        with self.engine.connect() as conn:
            return read_patient(conn.execution_options(isolation_level="AUTOCOMMIT"), golden_id)
