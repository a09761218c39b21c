"""Search tokens of the address lines, districts and texts for the golden records
already stored: Patient search gained ``address`` (any part of an address)

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-26 09:00:00

``address`` searches the tokens of the parts that have a parameter of their own (city,
state, country, postal code; migration 0014) and its own: each line, the district and
the text (``store.migrations.backfill``).
"""

from __future__ import annotations

from alembic import op

from store.migrations.backfill import add_search_tokens, remove_search_tokens

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_PARAMS = ("address",)


def upgrade() -> None:
    add_search_tokens(op.get_bind(), _PARAMS)


def downgrade() -> None:
    remove_search_tokens(op.get_bind(), _PARAMS)
