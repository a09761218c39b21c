"""JSON text for the driver-level writers (:class:`store.bulk.BulkWriter`), through orjson.

``orjson.dumps`` renders the small and medium values of a Patient batch (golden
resources, source records' normalized form, provenance values, link explanations,
event payloads) several times faster than the standard library's encoder. The text
differs only in spacing and in non-ASCII characters written as UTF-8 rather than
``\\u`` escapes, so JSON and JSONB columns read back the same value (but for a NaN
or infinite float, written as ``null``: the standard encoder writes ``NaN``, which is
not JSON and which PostgreSQL refuses). What orjson refuses (integers beyond 64
bits, non-string keys, a lone surrogate) goes through :meth:`store.bulk.BulkWriter.json`.
"""

from __future__ import annotations

from typing import Any

import orjson

from store.bulk import BulkWriter


def json_text(value: Any) -> str:
    """The JSON text of ``value`` for a JSON/JSONB column."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return BulkWriter.json(value)
