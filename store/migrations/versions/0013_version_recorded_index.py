"""golden_patient_version indexed by (recorded_at, golden_id, version): the type-level
history of Patient pages newest first without sorting every version

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-25 12:00:00

``GET /fhir/Patient/_history`` lists every kept version, newest first, paged by a keyset
cursor on (time, id, version); ``_since`` bounds the time. Without the index each page
sorted the whole table. A version's time is the time of its write, so new entries land
at the index's end.
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_INDEX = "ix_golden_patient_version_recorded"


def upgrade() -> None:
    op.create_index(
        _INDEX, "golden_patient_version", ["recorded_at", "golden_id", "version"], unique=False
    )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="golden_patient_version")
