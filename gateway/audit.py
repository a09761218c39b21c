"""The audit trail of every read of patient data: who, what, when, which query.

Rows go to the ``audit`` table (append-only) in the same transaction as the
read, so a read that answered is a read that was recorded. The query string is
kept there, where access is controlled, and never in the logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session
from starlette.requests import Request

from gateway.auth.tokens import Principal
from gateway.outcomes import OutcomeError
from store.models import Audit
from store.types import utcnow

#: Longest query string kept in an audit row.
MAX_AUDIT_QUERY = 4000
#: Column widths of ``audit.resource_id`` and ``audit.principal``.
MAX_AUDIT_ID = 64
MAX_AUDIT_PRINCIPAL = 100


class AuditEntry:
    """Filled in by the route while it works; written when the block ends."""

    def __init__(self) -> None:
        self.detail: dict[str, Any] = {}
        self.resource_id: str | None = None


def write_audit(
    session: Session,
    principal: Principal,
    action: str,
    *,
    resource_type: str | None,
    resource_id: str | None,
    query: str | None,
    outcome: int,
    detail: dict[str, Any] | None = None,
) -> None:
    session.execute(
        insert(Audit).values(
            at=utcnow(),
            principal=principal.client_id[:MAX_AUDIT_PRINCIPAL],
            action=action,
            resource_type=resource_type,
            resource_id=resource_id[:MAX_AUDIT_ID] if resource_id else None,
            query=query[:MAX_AUDIT_QUERY] if query else None,
            outcome=outcome,
            detail=detail or {},
        )
    )


@contextmanager
def audited(
    session: Session,
    principal: Principal,
    action: str,
    request: Request,
    resource_type: str,
    resource_id: str | None = None,
) -> Iterator[AuditEntry]:
    """Run a read and record it (also when it fails with an OperationOutcome), then commit."""
    entry = AuditEntry()
    entry.resource_id = resource_id
    query = request.url.query
    try:
        yield entry
    except OutcomeError as exc:
        session.rollback()
        write_audit(
            session,
            principal,
            action,
            resource_type=resource_type,
            resource_id=entry.resource_id,
            query=query,
            outcome=exc.status,
        )
        session.commit()
        raise
    write_audit(
        session,
        principal,
        action,
        resource_type=resource_type,
        resource_id=entry.resource_id,
        query=query,
        outcome=200,
        detail=entry.detail,
    )
    session.commit()
