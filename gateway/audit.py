"""The audit trail of every read of patient data: who, what, when, which query.

Rows go to the ``audit`` table (append-only). The read path only *enqueues* a
row; a background thread writes the queue in one multi-row INSERT every
:data:`DEFAULT_FLUSH_INTERVAL_S` (or sooner when :data:`FLUSH_BATCH` rows wait),
so a PHI read costs one indexed SELECT instead of a write transaction with its
WAL flush. The queue is drained when the app shuts down; a process killed
without warning can lose at most the last interval's rows, which the README
states. When the database is unreachable the rows stay queued and are retried;
past :data:`MAX_PENDING` rows the readers themselves flush (back-pressure).
The query string is kept in the audit table, where access is controlled, and
never in the logs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, insert
from starlette.requests import Request

from gateway.auth.tokens import Principal
from gateway.outcomes import OutcomeError
from store.models import Audit
from store.types import utcnow

log = logging.getLogger(__name__)

#: Longest query string kept in an audit row.
MAX_AUDIT_QUERY = 4000
#: Column widths of ``audit.resource_id`` and ``audit.principal``.
MAX_AUDIT_ID = 64
MAX_AUDIT_PRINCIPAL = 100
DEFAULT_FLUSH_INTERVAL_S = 0.05
FLUSH_BATCH = 500
MAX_PENDING = 50_000
COPY_COLUMNS = (
    "at",
    "principal",
    "action",
    "resource_type",
    "resource_id",
    "query",
    "outcome",
    "detail",
)
COPY_AUDIT = f"COPY audit ({', '.join(COPY_COLUMNS)}) FROM STDIN"


class AuditLog:
    """A write-behind queue of audit rows for one process."""

    def __init__(self, engine: Engine, flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S) -> None:
        self.engine = engine
        self.flush_interval_s = flush_interval_s
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(
        self,
        principal: Principal,
        action: str,
        *,
        resource_type: str | None,
        resource_id: str | None,
        query: str | None,
        outcome: int,
        detail: dict[str, Any] | None = None,
    ) -> None:
        row = {
            "at": utcnow(),
            "principal": principal.client_id[:MAX_AUDIT_PRINCIPAL],
            "action": action,
            "resource_type": resource_type,
            "resource_id": resource_id[:MAX_AUDIT_ID] if resource_id else None,
            "query": query[:MAX_AUDIT_QUERY] if query else None,
            "outcome": outcome,
            "detail": detail or {},
        }
        with self._lock:
            self._pending.append(row)
            backlog = len(self._pending)
        self._ensure_thread()
        if backlog >= MAX_PENDING:
            self.flush()
        elif backlog >= FLUSH_BATCH:
            self._wake.set()

    def flush(self) -> int:
        """Write every queued row now; returns how many were written."""
        with self._flush_lock:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows:
                return 0
            try:
                self._write(rows)
            except Exception:
                with self._lock:
                    self._pending = rows + self._pending
                log.error("audit flush failed; rows kept for retry", extra={"count": len(rows)})
                raise
            return len(rows)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if self.engine.dialect.name != "postgresql":
            with self.engine.begin() as conn:
                conn.execute(insert(Audit), rows)
            return
        # COPY costs PostgreSQL (and us) a fraction of an INSERT per row: the audit
        # trail is written as fast as reads happen without taxing them.
        raw = self.engine.raw_connection()
        try:
            with raw.cursor() as cursor, cursor.copy(COPY_AUDIT) as copy:  # type: ignore[attr-defined]
                for row in rows:
                    copy.write_row(
                        [row[c] for c in COPY_COLUMNS[:-1]] + [json.dumps(row["detail"])]
                    )
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()

    def close(self) -> None:
        """Stop the background writer and drain the queue (app shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._stop.clear()
                    self._thread = threading.Thread(
                        target=self._run, name="askonce-audit", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: S112 - logged in flush(); retried next tick
                continue


@contextmanager
def audited(
    audit: AuditLog,
    principal: Principal,
    action: str,
    request: Request,
    resource_type: str | None,
    resource_id: str | None = None,
    *,
    status: int = 200,
) -> Iterator[dict[str, Any]]:
    """Record a read or a write (also when it fails with an OperationOutcome; ``status``
    when it succeeds). The block may fill the yielded dict with non-PHI detail, such as
    the ids it disclosed."""
    detail: dict[str, Any] = {}
    # The raw query string from the ASGI scope: cheaper than building request.url.
    query = request.scope.get("query_string", b"").decode("latin-1")
    try:
        yield detail
    except OutcomeError as exc:
        audit.record(
            principal,
            action,
            resource_type=resource_type,
            resource_id=resource_id,
            query=query,
            outcome=exc.status,
        )
        raise
    audit.record(
        principal,
        action,
        resource_type=resource_type,
        resource_id=resource_id,
        query=query,
        outcome=status,
        detail=detail,
    )
