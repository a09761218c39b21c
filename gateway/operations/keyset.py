"""The searches of Encounter, QuestionnaireResponse and Questionnaire: one machinery, a
:class:`Keyset` per type (the Patient search has its own, with ``_revinclude`` and search
tokens).

The order is the request's ``_sort`` columns, then the row id (ascending unless ``_sort``
names ``_id``); the next link carries the last row's values in a signed cursor
(:mod:`gateway.operations.paging`), so pages do not shift when rows change between them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from gateway.operations.bundle import match_entry, page_url, searchset, shape
from gateway.operations.paging import decode_cursor, encode_cursor
from gateway.operations.params import SearchRequest, parse_search
from gateway.operations.sql import SortColumn, after, encode_value, order_by


@dataclass(frozen=True)
class Keyset:
    """A resource type's search: its parameters, how its rows are found, ordered and
    rendered."""

    #: The type's path under ``/fhir`` (the self and next links).
    path: str
    #: The statement of every row a search may find, before criteria.
    rows: Callable[[], Select[Any]]
    #: Search parameter -> the modifiers it takes; and the ``_sort`` parameters.
    supported: Mapping[str, frozenset[str]]
    sortable: frozenset[str]
    #: The condition of one parameter occurrence (name, modifier, raw value); 400 when
    #: invalid.
    criterion: Callable[[Session, str, str | None, str], ColumnElement[bool]]
    #: ``_sort`` parameter -> its column (``_id`` included: the unique tie-breaker).
    sort: Mapping[str, SortColumn]
    #: A row's value of a ``_sort`` parameter (``_id`` included), as the column orders it.
    value_of: Callable[[Any, str], Any]
    render: Callable[[Any], dict[str, Any]]
    #: ``_include`` value -> the resources it adds for a page's rows (``search.mode`` include).
    includes: Mapping[str, Callable[[Session, Sequence[Any]], list[dict[str, Any]]]] = field(
        default_factory=dict
    )
    #: Reference parameters that take chained parameters -> their target type.
    chains: Mapping[str, str] = field(default_factory=dict)

    def search(
        self,
        session: Session,
        items: Sequence[tuple[str, str]],
        *,
        base: str,
        secret: str,
        strict: bool,
        default_count: int,
        max_count: int,
    ) -> dict[str, Any]:
        """A search of this type with the query ``items``: one searchset page."""
        request = parse_search(
            items,
            self.supported,
            sortable=self.sortable,
            includes=frozenset(self.includes),
            chains=self.chains,
            strict=strict,
            default_count=default_count,
            max_count=max_count,
        )
        stmt = self.rows()
        for name, modifier, raw in request.criteria:
            stmt = stmt.where(self.criterion(session, name, modifier, raw))
        return keyset_page(session, stmt, request, self, base=base, secret=secret)


def keyset_page(
    session: Session,
    stmt: Select[Any],
    request: SearchRequest,
    keyset: Keyset,
    *,
    base: str,
    secret: str,
) -> dict[str, Any]:
    """The searchset Bundle of the page ``request`` asks for among the rows of ``stmt``."""
    path = keyset.path
    self_url = page_url(base, path, request.used_params())
    total = None
    if request.counted:
        total = int(session.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
    if request.summary_count:
        return searchset([], self_url=self_url, total=total, ignored=request.ignored)
    params = [(p, desc) for p, desc in request.sort if p != "_id"]
    params.append(("_id", next((d for p, d in request.sort if p == "_id"), False)))
    sort = [(keyset.sort[p], desc) for p, desc in params]
    if request.cursor is not None:
        stmt = stmt.where(after(sort, decode_cursor(secret, request.cursor).get("k") or []))
    rows = session.scalars(stmt.order_by(*order_by(sort)).limit(request.count + 1)).all()
    page, more = rows[: request.count], len(rows) > request.count
    entries = [
        match_entry(base, shape(keyset.render(r), request.elements, request.summary)) for r in page
    ]
    # Each resource once, however many _include values name it (a fullUrl is unique).
    included: dict[tuple[str, str], dict[str, Any]] = {}
    for include in request.include if page else ():
        for resource in keyset.includes[include](session, page):
            included.setdefault((resource["resourceType"], resource["id"]), resource)
    entries.extend(match_entry(base, resource, "include") for resource in included.values())
    next_url = None
    if more:
        key = [encode_value(keyset.value_of(page[-1], p)) for p, _ in params]
        token = encode_cursor(secret, {"k": key})
        next_url = page_url(base, path, [*request.used_params(), ("_cursor", token)])
    return searchset(
        entries, self_url=self_url, next_url=next_url, total=total, ignored=request.ignored
    )
