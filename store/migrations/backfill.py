"""Search tokens added to, or removed from, the golden records already stored when
Patient search gains a parameter (migrations 0014 and 0016).

Golden records written after the upgrade get the new tokens with the others
(``fhir_mapping.search_tokens``); those written before would not be found by the new
parameter until their next change. :func:`add_search_tokens` computes them from each
stored resource by the same function, a batch of records at a time, for active records
only (the others have no tokens).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from fhir_mapping.search import search_tokens

_BATCH = 2000
_PAGE = sa.text(
    "SELECT id, resource, status FROM golden_patient WHERE id > :after ORDER BY id LIMIT :limit"
)
_INSERT = sa.text(
    "INSERT INTO golden_search_token (golden_id, param, system, value)"
    " VALUES (:golden_id, :param, :system, :value)"
)


def _document(stored: Any) -> dict[str, Any]:
    """The stored resource: JSON text on SQLite, already parsed from PostgreSQL's JSONB."""
    document = json.loads(stored) if isinstance(stored, str | bytes) else stored
    return document if isinstance(document, dict) else {}


def add_search_tokens(bind: Connection, params: Collection[str]) -> None:
    """Insert the tokens of ``params`` of every active golden record."""
    after = ""
    while True:
        rows = bind.execute(_PAGE, {"after": after, "limit": _BATCH}).all()
        if not rows:
            return
        tokens = [
            {"golden_id": golden_id, "param": param, "system": system, "value": value}
            for golden_id, stored, status in rows
            if stored and status == "active"
            for param, system, value in search_tokens(_document(stored))
            if param in params
        ]
        if tokens:
            bind.execute(_INSERT, tokens)
        after = rows[-1][0]


def remove_search_tokens(bind: Connection, params: Collection[str]) -> None:
    """Delete every token of ``params``."""
    statement = sa.text("DELETE FROM golden_search_token WHERE param IN :params")
    bind.execute(
        statement.bindparams(sa.bindparam("params", expanding=True)), {"params": list(params)}
    )
