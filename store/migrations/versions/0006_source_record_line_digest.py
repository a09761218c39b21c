"""source_record.line_digest: the NDJSON line a record was last stored from, so a
re-delivered export's unchanged lines are recognised without decoding them

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 05:30:00

A full re-sync of an NDJSON folder or a bulk export that did not change spent most of
its time decoding each line, rendering it as canonical JSON and hashing it, only to find
the content hash it already had (``sync.records.describe``). The digest of the line's
bytes (``sync.records.line_digest``), stored with the record it produced, finds the
unchanged lines of a page with one indexed read instead (``sync.pipeline``). Null for a
record that did not come from a line (a FHIR search page, a push, a pre-0006 record) or
whose mapping failed (retried on its next delivery): the partial index holds the others.

SQLite rebuilds the table to put the column with the small ones, before the documents
(migration 0003: a column stored after a document that spilled to overflow pages is
read by walking them), and makes the record's delete trigger (0004's) again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

from store.migrations.triggers import create_delete_trigger, drop_delete_trigger

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_INDEX = "ix_source_record_line"
_WHERE = sa.text("line_digest IS NOT NULL")
#: SQLite: 0003's order of the columns, the small ones before the documents...
_MIGRATION_0003 = importlib.import_module(
    "store.migrations.versions.0003_record_source_key_features"
)
_ORDER_0005: tuple[str, ...] = _MIGRATION_0003.SMALL_FIRST
#: The source's delete trigger (0003), which names the table: dropped while SQLite
#: renames the rebuilt table into place, then made again.
_SOURCE_CASCADE: str = _MIGRATION_0003.SOURCE_CASCADE
#: ... with the digest among the small ones.
_SMALL_FIRST = (
    *_ORDER_0005[: _ORDER_0005.index("raw")],
    "line_digest",
    "raw",
    "normalized",
    "error",
)
#: The record's delete trigger as 0004 made it (SQLite's rebuild drops it).
_RECORD_CASCADE: tuple[str, ...] = importlib.import_module(
    "store.migrations.versions.0004_decision_row_keys"
).RECORD_CASCADE


def _alter(order: tuple[str, ...], change: Callable[[BatchOperations], None]) -> None:
    """``change`` to ``source_record``; on SQLite a rebuild with its columns in ``order``,
    the triggers naming the table dropped around it and made again."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    if not postgresql:
        drop_delete_trigger("source", postgresql)
    with op.batch_alter_table(
        "source_record",
        schema=None,
        partial_reordering=[] if postgresql else [order],
        recreate="auto" if postgresql else "always",
    ) as batch_op:
        change(batch_op)
    if not postgresql:
        create_delete_trigger("source_record", _RECORD_CASCADE, postgresql)
        create_delete_trigger("source", (_SOURCE_CASCADE,), postgresql)


def upgrade() -> None:
    _alter(
        _SMALL_FIRST,
        lambda batch: batch.add_column(
            sa.Column("line_digest", sa.String(length=32), nullable=True)
        ),
    )
    op.create_index(
        _INDEX,
        "source_record",
        ["line_digest"],
        unique=False,
        sqlite_where=_WHERE,
        postgresql_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="source_record")
    _alter(_ORDER_0005, lambda batch: batch.drop_column("line_digest"))
