"""One page of a search, in keyset order: what the Encounter and QuestionnaireResponse
searches share (the Patient search has its own, with ``_revinclude`` and search tokens).

The order is the request's ``_sort`` columns, then the row id (ascending unless ``_sort``
names ``_id``); the next link carries the last row's values in a signed cursor
(:mod:`gateway.operations.paging`), so pages do not shift when rows change between them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from gateway.operations.bundle import match_entry, page_url, searchset, subset
from gateway.operations.paging import decode_cursor, encode_cursor
from gateway.operations.params import SearchRequest
from gateway.operations.sql import SortColumn, after, encode_value, order_by


@dataclass(frozen=True)
class Keyset:
    """How a resource type's rows are ordered and rendered."""

    #: ``_sort`` parameter -> its column (``_id`` included: the unique tie-breaker).
    sort: Mapping[str, SortColumn]
    #: A row's value of a ``_sort`` parameter (``_id`` included), as the column orders it.
    value_of: Callable[[Any, str], Any]
    render: Callable[[Any], dict[str, Any]]


def keyset_page(
    session: Session,
    stmt: Select[Any],
    request: SearchRequest,
    keyset: Keyset,
    *,
    path: str,
    base: str,
    secret: str,
) -> dict[str, Any]:
    """The searchset Bundle of the page ``request`` asks for among the rows of ``stmt``."""
    self_url = page_url(base, path, request.used_params())
    if request.summary_count:
        total = session.scalar(select(func.count()).select_from(stmt.subquery()))
        return searchset([], self_url=self_url, total=int(total or 0))
    params = [(p, desc) for p, desc in request.sort if p != "_id"]
    params.append(("_id", next((d for p, d in request.sort if p == "_id"), False)))
    sort = [(keyset.sort[p], desc) for p, desc in params]
    if request.cursor is not None:
        stmt = stmt.where(after(sort, decode_cursor(secret, request.cursor).get("k") or []))
    rows = session.scalars(stmt.order_by(*order_by(sort)).limit(request.count + 1)).all()
    page, more = rows[: request.count], len(rows) > request.count
    entries = [match_entry(base, subset(keyset.render(r), request.elements)) for r in page]
    next_url = None
    if more:
        key = [encode_value(keyset.value_of(page[-1], p)) for p, _ in params]
        token = encode_cursor(secret, {"k": key})
        next_url = page_url(base, path, [*request.used_params(), ("_cursor", token)])
    return searchset(entries, self_url=self_url, next_url=next_url)
