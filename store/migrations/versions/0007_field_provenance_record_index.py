"""field_provenance.source_record_id indexed: a deleted record's trigger finds its
provenance rows by index instead of reading the whole table

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 12:00:00

The record's ``AFTER DELETE`` trigger (migration 0002) sets ``source_record_id`` to null
in the provenance rows that name the deleted record. Without an index on the column it
read every provenance row once per deleted record, Encounters' included, so erasing a
source (``sync.retire.remove_source``) grew with the square of its size: 3,000 generated
Patients' first source erased in 2.4 s, 10,000's in 26 s. The index is written with each
provenance row, which golden records write with every new rendering.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_INDEX = "ix_field_provenance_record"


def upgrade() -> None:
    op.create_index(_INDEX, "field_provenance", ["source_record_id"], unique=False)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="field_provenance")
