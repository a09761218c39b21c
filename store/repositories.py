"""Repositories: the named queries the rest of askonce uses on the tables.

Each takes a :class:`~sqlalchemy.orm.Session` and never commits: the caller's
unit of work decides what commits together (a page of records with its cursor).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store.models import Audit, Source, SyncCursor, SyncRun
from store.types import utcnow


class NotFoundError(LookupError):
    """The requested row does not exist."""


class SourceRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, **fields: Any) -> Source:
        source = Source(**fields)
        self.session.add(source)
        self.session.flush()
        return source

    def get(self, source_id: int) -> Source:
        source = self.session.get(Source, source_id)
        if source is None:
            raise NotFoundError(f"source {source_id}")
        return source

    def get_by_name(self, name: str) -> Source:
        source = self.session.scalar(select(Source).where(Source.name == name))
        if source is None:
            raise NotFoundError(f"source {name!r}")
        return source

    def list(self) -> Sequence[Source]:
        return self.session.scalars(select(Source).order_by(Source.name)).all()


class CursorRepository:
    """Sync cursors; written in the same transaction as the page they follow."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, source_id: int, resource_type: str) -> str | None:
        row = self.session.get(SyncCursor, (source_id, resource_type))
        return row.cursor if row else None

    def set(self, source_id: int, resource_type: str, cursor: str | None) -> None:
        row = self.session.get(SyncCursor, (source_id, resource_type))
        if row is None:
            self.session.add(
                SyncCursor(source_id=source_id, resource_type=resource_type, cursor=cursor)
            )
        else:
            row.cursor = cursor
            row.updated_at = utcnow()

    def clear(self, source_id: int) -> None:
        """Forget where the source's reads stand (each type starts over). The state rows
        whose key starts with ``$`` stay: a subscription's last event number, an owed
        catch-up (``sync.intake``, ``sync.catchup``) are not read positions."""
        for row in self.session.scalars(
            select(SyncCursor).where(
                SyncCursor.source_id == source_id, ~SyncCursor.resource_type.startswith("$")
            )
        ):
            self.session.delete(row)


class SyncRunRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def start(self, source_id: int, *, full: bool = False) -> SyncRun:
        run = SyncRun(source_id=source_id, full=full, detail={})
        self.session.add(run)
        self.session.flush()
        return run

    def latest(self, source_id: int) -> SyncRun | None:
        return self.session.scalar(
            select(SyncRun)
            .where(SyncRun.source_id == source_id)
            .order_by(SyncRun.started_at.desc(), SyncRun.id.desc())
            .limit(1)
        )


class AuditRepository:
    """The append-only audit trail. There is deliberately no update or delete."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def record(
        self,
        principal: str,
        action: str,
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        query: str | None = None,
        outcome: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self.session.add(
            Audit(
                principal=principal,
                action=action,
                resource_type=resource_type,
                resource_id=resource_id,
                query=query,
                outcome=outcome,
                detail=detail or {},
            )
        )
