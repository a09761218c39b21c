"""Search tokens of the address parts (city, state, country) for the golden records
already stored: Patient search gained ``address-city``, ``address-state`` and
``address-country``

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-25 13:00:00

Golden records written from now on get these tokens with the others
(``fhir_mapping.search_tokens``); those written before get them here
(``store.migrations.backfill``). The downgrade removes them.
"""

from __future__ import annotations

from alembic import op

from store.migrations.backfill import add_search_tokens, remove_search_tokens

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

#: The parameters' names, as they were when this revision was written.
_PARAMS = ("address-city", "address-state", "address-country")


def upgrade() -> None:
    add_search_tokens(op.get_bind(), _PARAMS)


def downgrade() -> None:
    remove_search_tokens(op.get_bind(), _PARAMS)
