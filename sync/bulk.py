"""Bulk writes of already-shaped rows, at the driver level.

The Encounter path writes three rows per resource (source record, encounter,
outbox event). Through ``session.execute(insert(table), rows)`` SQLAlchemy runs
every value of every row through its type's bind processor (JSON encoding, the
UTC timestamp decorator, SQLite's datetime formatting) and builds a parameter
dict per row: about 37 us per outbox row on the benchmark machine, more than the
rest of the path. :class:`BulkWriter` encodes each value once, in the form the
DBAPI driver takes (so a resource's JSON text is shared by the two columns that
store it), and hands the rows to the driver's ``executemany``: about 13 us.

The encodings are those of :mod:`store.types`: JSON text (``JSONB`` on
PostgreSQL), and UTC timestamps, naive ``YYYY-MM-DD HH:MM:SS.ffffff`` text on
SQLite (SQLAlchemy's storage format, so ORM reads and comparisons are unchanged)
and aware datetimes on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

#: JSON as SQLAlchemy's default serializer writes it (``json.dumps`` defaults), built once.
_JSON_ENCODER = json.JSONEncoder()


class BulkWriter:
    """``INSERT`` many rows of one table in one ``executemany`` (the caller's transaction).

    Values are passed through :meth:`json` and :meth:`timestamp` by the caller; the
    writer only renders the statement for the session's dialect.
    """

    def __init__(self, session: Session) -> None:
        self.connection = session.connection()
        dialect = self.connection.dialect
        self.postgresql = dialect.name == "postgresql"
        self._placeholder = "?" if dialect.paramstyle == "qmark" else "%s"
        self._statements: dict[tuple[str, tuple[str, ...], frozenset[str]], str] = {}

    @staticmethod
    def json(value: Any) -> str:
        """The JSON text of a value for a JSON/JSONB column."""
        return _JSON_ENCODER.encode(value)

    def timestamp(self, value: datetime | None) -> datetime | str | None:
        """A timestamp for a :class:`store.types.UTCDateTime` column (naive means UTC)."""
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        elif value.utcoffset():
            value = value.astimezone(UTC)
        if self.postgresql:
            return value
        return value.replace(tzinfo=None).isoformat(" ", "microseconds")

    def _value(self, column: str, json_columns: frozenset[str]) -> str:
        if self.postgresql and column in json_columns:
            return f"CAST({self._placeholder} AS JSONB)"
        return self._placeholder

    def _statement(self, table: str, columns: Sequence[str], json_columns: frozenset[str]) -> str:
        key = (table, tuple(columns), json_columns)
        statement = self._statements.get(key)
        if statement is None:
            values = [self._value(column, json_columns) for column in columns]
            statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(values)})"
            self._statements[key] = statement
        return statement

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        json_columns: frozenset[str] = frozenset(),
    ) -> None:
        """Insert ``rows`` (tuples in ``columns`` order) into ``table``; ``json_columns``
        hold text from :meth:`json`."""
        if rows:
            self.connection.exec_driver_sql(
                self._statement(table, columns, json_columns), list(rows)
            )

    def update_by_id(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        json_columns: frozenset[str] = frozenset(),
    ) -> None:
        """``UPDATE table SET columns… WHERE id = ?`` per row: each tuple holds the
        values in ``columns`` order, then the id."""
        if not rows:
            return
        key = (table, ("UPDATE", *columns), json_columns)
        statement = self._statements.get(key)
        if statement is None:
            assignments = [f"{column} = {self._value(column, json_columns)}" for column in columns]
            statement = (
                f"UPDATE {table} SET {', '.join(assignments)} WHERE id = {self._placeholder}"
            )
            self._statements[key] = statement
        self.connection.exec_driver_sql(statement, list(rows))
