"""Search tokens of the address parts (city, state, country) for the golden records
already stored: Patient search gained ``address-city``, ``address-state`` and
``address-country``

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-25 13:00:00

Golden records written from now on get these tokens with the others
(``fhir_mapping.search_tokens``). Those written before would not be found by the new
parameters until their next change, so each one's are added here, a batch of records
at a time, from the stored resource by the same function. The downgrade removes them.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

from fhir_mapping.search import ADDRESS_PARTS, search_tokens

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_PARAMS = tuple(ADDRESS_PARTS.values())
_BATCH = 2000
_PAGE = sa.text(
    "SELECT id, resource FROM golden_patient WHERE id > :after ORDER BY id LIMIT :limit"
)
_INSERT = sa.text(
    "INSERT INTO golden_search_token (golden_id, param, system, value)"
    " VALUES (:golden_id, :param, :system, :value)"
)


def _document(stored: Any) -> dict[str, Any]:
    """The stored resource: JSON text on SQLite, already parsed from PostgreSQL's JSONB."""
    document = json.loads(stored) if isinstance(stored, str | bytes) else stored
    return document if isinstance(document, dict) else {}


def upgrade() -> None:
    bind = op.get_bind()
    after = ""
    while True:
        rows = bind.execute(_PAGE, {"after": after, "limit": _BATCH}).all()
        if not rows:
            return
        tokens = [
            {"golden_id": golden_id, "param": param, "system": system, "value": value}
            for golden_id, stored in rows
            if stored
            for param, system, value in search_tokens(_document(stored))
            if param in _PARAMS
        ]
        if tokens:
            bind.execute(_INSERT, tokens)
        after = rows[-1][0]


def downgrade() -> None:
    op.get_bind().execute(
        sa.text("DELETE FROM golden_search_token WHERE param IN (:a, :b, :c)"),
        dict(zip(("a", "b", "c"), _PARAMS, strict=True)),
    )
