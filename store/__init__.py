"""Storage: SQLAlchemy 2.0 models, repositories and Alembic migrations.

Errors::

    LookupError
     └── NotFoundError         (a row that was asked for by id or name is missing)
    RuntimeError
     └── SchemaNotAtHeadError  (run `askonce db upgrade`)
"""

from __future__ import annotations

from store.db import make_engine, make_session_factory, unit_of_work
from store.migrate import SchemaNotAtHeadError, check_schema_at_head, downgrade, upgrade
from store.models import ALL_TABLES, Base
from store.repositories import (
    AuditRepository,
    CursorRepository,
    NotFoundError,
    SourceRepository,
    SyncRunRepository,
)

__all__ = [
    "ALL_TABLES",
    "AuditRepository",
    "Base",
    "CursorRepository",
    "NotFoundError",
    "SchemaNotAtHeadError",
    "SourceRepository",
    "SyncRunRepository",
    "check_schema_at_head",
    "downgrade",
    "make_engine",
    "make_session_factory",
    "unit_of_work",
    "upgrade",
]
