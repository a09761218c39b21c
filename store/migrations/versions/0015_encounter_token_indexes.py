"""GIN indexes on an Encounter's identifiers and types (PostgreSQL): ``Encounter?identifier=``
and ``Encounter?type=``

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-25 15:00:00

The searches look inside the stored resource (``gateway.operations.json_tokens``): a
JSONB containment (``@>``) on ``resource -> 'identifier'`` and ``resource -> 'type'``,
which these ``jsonb_path_ops`` expression indexes answer without reading every
Encounter. SQLite has no such index; its search reads the JSON (nothing to do here).
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

#: Index name -> the element of ``encounter.resource`` it indexes.
INDEXES = {"ix_encounter_identifier": "identifier", "ix_encounter_type": "type"}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, element in INDEXES.items():
        op.execute(
            f"CREATE INDEX {name} ON encounter USING gin ((resource -> '{element}') jsonb_path_ops)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in INDEXES:
        op.execute(f"DROP INDEX {name}")
