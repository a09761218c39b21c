"""source.removing_since: when a source's removal began, so that nothing enables it again
before the removal is finished

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 18:40:00

``sync.retire.remove_source`` disables the source, then deletes its records from the
golden records in transactions of 500 and erases them; an interrupted removal is
finished by running it again. Until then the source row stays, disabled, and nothing
said it was half removed: ``askonce sources enable`` or ``PATCH /admin/sources/{id}``
could enable it, and a sync in between would bring back records the removal then takes
out again. Null for a source that is not being removed. A plain ``ADD COLUMN`` on both
backends (nullable, no default): SQLite keeps the table and its triggers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import store.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "source",
        sa.Column("removing_since", store.types.UTCDateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    # SQLite 3.35 and newer drop a column in place: the table keeps its triggers.
    op.drop_column("source", "removing_since")
