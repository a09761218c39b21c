"""Text arrays sent as one joined string (store.bulk.joined_text / array_sql) come back
as exactly the values sent, NULLs included, or are sent as plain arrays."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from store.bulk import TEXT_NULL, TEXT_SEPARATOR, array_sql, joined_text


@pytest.mark.parametrize(
    "values",
    [
        ["a", "b"],
        ["", "x", ""],
        [None, "b", None],
        ['{"a":"\\u001f\\\\"}', "Patient/1"],
    ],
)
def test_joinable_values_are_joined(values: list[Any]) -> None:
    text = joined_text(values)
    assert text is not None
    assert text.split(TEXT_SEPARATOR) == [TEXT_NULL if v is None else v for v in values]


@pytest.mark.parametrize(
    "values",
    [
        ["only"],  # string_to_array('') is an empty array: one row never joins
        ["a", f"b{TEXT_SEPARATOR}c"],
        ["a", TEXT_NULL],
        [None, TEXT_NULL],
        ["a", 1],
        [None, None, 2],
    ],
)
def test_values_that_cannot_travel_joined_stay_arrays(values: list[Any]) -> None:
    assert joined_text(values) is None
    assert array_sql("VARCHAR(30)", values) == ("%b::VARCHAR(30)[]", values)


def test_a_joined_array_reads_back_as_the_values_sent(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        return
    values = ["", None, "x", 'é "quoted" \\ back', None, "Patient/p-1"]
    sql, parameter = array_sql("TEXT", values)
    assert parameter != values
    with engine.connect() as connection:
        back = connection.exec_driver_sql(f"SELECT {sql}", (parameter,)).scalar_one()
    assert back == values
