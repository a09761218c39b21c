"""Integer and boolean arrays sent as one joined string (store.bulk.array_sql) read back
on PostgreSQL as exactly the values sent (NULLs, 64-bit extremes), or stay lists when
their values could not travel so; float and timestamp arrays read back exact either way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine

from store.bulk import array_sql

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")

JOINED = [
    ("BIGINT", [0, None, 2**63 - 1, -(2**63), 7, None]),
    ("INTEGER", [2**31 - 1, -(2**31), None, 0]),
    ("INTEGER", [5]),
    ("INTEGER", [None]),
    ("BOOLEAN", [True, False, None, True]),
    ("BOOLEAN", [False]),
]
SENT = [
    ("FLOAT", [0.1, 1 / 3, -0.0, 5e-324, 1.7976931348623157e308, None, 1e-310, float("nan")]),
    (
        "TIMESTAMPTZ",
        [
            datetime(2026, 11, 22, 17, 0, 0, 123456, tzinfo=UTC),
            None,
            datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2026, 11, 1, 1, 30, 0, 5, tzinfo=NEW_YORK, fold=1),
            datetime(2026, 6, 1, 12, 0, 0, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ],
    ),
]


def _comparable(sql_type: str, values: list[Any]) -> list[Any]:
    """Values as compared: floats by their text (-0.0 == 0.0 and nan != nan in Python),
    timestamps by instant (a time in a DST fold never equals one of another zone)."""
    if sql_type == "FLOAT":
        return [None if v is None else repr(v) for v in values]
    if sql_type == "TIMESTAMPTZ":
        return [None if v is None else v - EPOCH for v in values]
    return [(type(v), v) for v in values]


def _read_back(engine: Engine, sql_type: str, values: list[Any]) -> list[Any]:
    sql, parameter = array_sql(sql_type, values)
    with engine.connect() as connection:
        back = connection.exec_driver_sql(f"SELECT {sql}", (parameter,)).scalar_one()
    return list(back)


@pytest.mark.parametrize(("sql_type", "values"), JOINED)
def test_joined_arrays_read_back_as_sent(engine: Engine, sql_type: str, values: list[Any]) -> None:
    sql, parameter = array_sql(sql_type, values)
    assert isinstance(parameter, str), "these values travel as one string"
    assert "string_to_array" in sql
    if engine.dialect.name != "postgresql":
        return
    back = _read_back(engine, sql_type, values)
    assert _comparable(sql_type, back) == _comparable(sql_type, values)


@pytest.mark.parametrize(("sql_type", "values"), SENT)
def test_other_arrays_read_back_as_sent(engine: Engine, sql_type: str, values: list[Any]) -> None:
    if engine.dialect.name != "postgresql":
        return
    back = _read_back(engine, sql_type, values)
    assert _comparable(sql_type, back) == _comparable(sql_type, values)


@pytest.mark.parametrize(
    ("sql_type", "values"),
    [
        ("INTEGER", [1, True]),  # a bool is not written as an int
        ("BIGINT", [1, "2"]),
        ("BIGINT", [1, 2.0]),
        ("BOOLEAN", [True, 1]),
        ("NUMERIC", [1, 2]),
    ],
)
def test_values_that_cannot_travel_joined_stay_lists(sql_type: str, values: list[Any]) -> None:
    assert array_sql(sql_type, values) == (f"%b::{sql_type}[]", values)
