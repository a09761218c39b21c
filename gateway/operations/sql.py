"""SQL shared by the searches: keyset ordering (``_sort`` + id) and date prefixes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, not_, or_

from gateway.operations.params import DateRange, fail

SortColumn = tuple[Any, str]
#: Lengths of the partial FHIR date forms YYYY and YYYY-MM.
YEAR, YEAR_MONTH = 4, 7  # (expression, "str" | "dt" | "int")


def encode_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def decode_value(value: Any, kind: str) -> Any:
    try:
        if kind == "dt":
            return datetime.fromisoformat(value)
        if kind == "int":
            return int(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise fail("The paging cursor is invalid.", "_cursor") from exc


def order_by(columns: Sequence[tuple[SortColumn, bool]]) -> list[ColumnElement[Any]]:
    return [expr.desc() if desc else expr.asc() for (expr, _), desc in columns]


def after(columns: Sequence[tuple[SortColumn, bool]], key: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``key`` in the lexicographic order of ``columns``."""
    if len(key) != len(columns):
        raise fail("The paging cursor is invalid.", "_cursor")
    values = [decode_value(v, kind) for v, ((_, kind), _) in zip(key, columns, strict=True)]
    clauses = []
    for i, ((expr, _), desc) in enumerate(columns):
        equal = [columns[j][0][0] == values[j] for j in range(i)]
        step = expr < values[i] if desc else expr > values[i]
        clauses.append(and_(*equal, step))
    return or_(*clauses)


def date_condition(column: Any, rng: DateRange, *, as_date: bool) -> Any:
    """A point value (birth date, lastUpdated) against a search range and prefix."""
    low: Any = rng.low_date if as_date else rng.low
    high: Any = rng.high_date if as_date else rng.high
    inside = and_(column >= low, column < high)
    return {
        "eq": inside,
        "ap": inside,
        "ne": not_(inside),
        "lt": column < low,
        "eb": column < low,
        "le": column < high,
        "gt": column >= high,
        "sa": column >= high,
        "ge": column >= low,
    }[rng.prefix]


def partial_date_bounds(column: Any) -> tuple[Any, Any]:
    """First and last day a stored FHIR date (``1970``, ``1970-03`` or ``1970-03-14``)
    stands for, as ISO strings; string order is date order. (A month's last day is
    written ``-31``: as a bound for string comparison that is what it needs to be.)"""
    length = func.length(column)
    low = case(
        (length == YEAR, column + "-01-01"), (length == YEAR_MONTH, column + "-01"), else_=column
    )
    high = case(
        (length == YEAR, column + "-12-31"), (length == YEAR_MONTH, column + "-31"), else_=column
    )
    return low, high


def range_condition(low: Any, high: Any, rng: DateRange) -> Any:
    """A stored range ``[low, high]`` (whole days, inclusive) against a search range and
    prefix, as https://hl7.org/fhir/R4/search.html#prefix defines them for ranges."""
    start, end = rng.low_date, rng.high_date  # [start, end)
    inside = and_(low >= start, high < end)
    return {
        "eq": inside,
        "ne": not_(inside),
        "ap": and_(low < end, high >= start),
        "lt": low < start,
        "le": low < end,
        "gt": high >= end,
        "ge": high >= start,
        "sa": low >= end,
        "eb": high < start,
    }[rng.prefix]


def missing_condition(present: ColumnElement[bool], raw: str, parameter: str) -> Any:
    """``:missing=true`` (no value: not ``present``) or ``:missing=false`` (``present``),
    https://hl7.org/fhir/R4/search.html#modifiers; 400 on any other value."""
    if raw not in ("true", "false"):
        raise fail(f"{parameter}:missing takes true or false.", f"{parameter}:missing")
    return not_(present) if raw == "true" else present


def not_in(column: Any, values: Sequence[Any]) -> Any:
    """A code column's ``:not`` (https://hl7.org/fhir/R4/search.html#token): none of
    ``values``, which includes having no value at all."""
    return or_(column.is_(None), column.not_in(list(values)))
