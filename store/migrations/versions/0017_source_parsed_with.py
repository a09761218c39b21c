"""source.parsed_with: what a source's stored Patients were last read with, so that an
upgrade of the mapping, or a new parse option, reaches the records already stored

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-27 09:00:00

A sync skips a resource whose content is unchanged (its content hash), so a Patient
stored before an upgrade that reads more of it (marital status, an identifier's type)
or before a change of the source's ``mrn_system`` or ``default_region`` kept what the
older reading made of it, and so did its golden record. ``sync.reparse`` reads a
source's stored Patients again when this stamp is not that of the running code and
the source's options: ``{"stamp": {...}, "through": <record id> | null}``. Null for
every source stored before (read by an unknown version): each is read again once.
A plain ``ADD COLUMN`` on both backends (nullable, no default).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.types

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("source", sa.Column("parsed_with", store.types.JSONType, nullable=True))


def downgrade() -> None:
    # SQLite 3.35 and newer drop a column in place: the table keeps its triggers.
    op.drop_column("source", "parsed_with")
