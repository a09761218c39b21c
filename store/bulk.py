"""Bulk writes of already-shaped rows, at the driver level.

The Encounter path writes three rows per resource (source record, encounter,
outbox event). Through ``session.execute(insert(table), rows)`` SQLAlchemy runs
every value of every row through its type's bind processor (JSON encoding, the
UTC timestamp decorator, SQLite's datetime formatting) and builds a parameter
dict per row: about 37 us per outbox row on the benchmark machine, more than the
rest of the path. :class:`BulkWriter` encodes each value once, in the form the
DBAPI driver takes (so a resource's JSON text is shared by the two columns that
store it), and sends a page's rows in one call:

- SQLite: ``executemany`` of a plain ``INSERT`` (the sqlite3 module loops in C);
- PostgreSQL: one ``INSERT … SELECT … FROM unnest(%s, …) RETURNING …`` with one
  array per column. psycopg's ``executemany`` would send, and parse the reply of,
  one statement per row, and every ``IN (…)`` list of a thousand placeholders is
  re-parsed by the driver; arrays (:func:`one_of`) avoid both. A text column's array
  travels as one string, its values joined by a separator no value holds, split by
  ``string_to_array`` (:func:`joined_text`): psycopg dumps a list value by value in
  Python (0.4-0.85 ms per 1000 strings), ``str.join`` takes ~0.01 ms.

The encodings are those of :mod:`store.types`: JSON text (``JSONB`` on
PostgreSQL), and UTC timestamps, naive ``YYYY-MM-DD HH:MM:SS.ffffff`` text on
SQLite (SQLAlchemy's storage format, so ORM reads and comparisons are unchanged)
and aware datetimes on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import ColumnElement, String, any_, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from store.models import Base

#: JSON as SQLAlchemy's default serializer writes it (``json.dumps`` defaults), built once.
_JSON_ENCODER = json.JSONEncoder()
#: Length of SQLAlchemy's SQLite datetime text, ``YYYY-MM-DD HH:MM:SS.ffffff``.
_SQLITE_TIMESTAMP_CHARS = 26


#: SQLite's ``IN`` over a list of ids sent as one JSON array parameter (see :func:`json_ids`).
SQLITE_IN_JSON = "IN (SELECT value FROM json_each(?))"
#: PostgreSQL's ``IN`` over a list sent as one array parameter.
PG_IN_ARRAY = "= ANY(%s)"


def json_ids(values: Collection[Any]) -> str | None:
    """The JSON array text of ``values`` for SQLite's ``json_each``, or None unless every
    value is an ``int`` (64-bit) or a ``str`` (those come back from ``json_each`` as
    INTEGER and TEXT, so they compare with, and use the indexes of, integer and text
    columns)."""
    for value in values:
        kind = type(value)
        if kind is not int and kind is not str:
            return None
    try:
        return orjson.dumps(list(values)).decode()
    except orjson.JSONEncodeError:  # an int beyond 64 bits, a lone surrogate
        return None


#: Separator of the values of a text array sent as one string (:func:`joined_text`), and
#: the field that stands for NULL: ASCII unit and record separators, control characters
#: that JSON text never holds unescaped and FHIR ids and codes never hold at all.
TEXT_SEPARATOR = "\x1f"
TEXT_NULL = "\x1e"
#: SQL that splits such a string back into an array (``%b`` is the string).
_SPLIT_TEXT = "string_to_array(CAST(%b AS TEXT), chr(31), chr(30))"


def joined_text(values: Sequence[Any]) -> str | None:
    """``values`` (strs and Nones) as one string for ``string_to_array`` (see
    :data:`TEXT_SEPARATOR`), or None when they cannot travel so: a value that is not a
    str, holds the separator or is the NULL field, or a single row (``string_to_array``
    makes an empty array of an empty string)."""
    if len(values) < 2:
        return None
    nulls = 0
    try:
        text = TEXT_SEPARATOR.join(values)
    except TypeError:
        nulls = values.count(None)
        if not nulls:
            return None
        try:
            text = TEXT_SEPARATOR.join([TEXT_NULL if v is None else v for v in values])
        except TypeError:
            return None
    if text.count(TEXT_SEPARATOR) != len(values) - 1 or text.count(TEXT_NULL) != nulls:
        return None
    return text


_NONE = type(None)
_INTS = frozenset({int, _NONE})
_BOOLS = frozenset({bool, _NONE})


def _joined(values: Sequence[Any], render: Any) -> str:
    """``values`` rendered by ``render`` and joined, None as :data:`TEXT_NULL`."""
    if None in values:
        return TEXT_SEPARATOR.join([TEXT_NULL if v is None else render(v) for v in values])
    return TEXT_SEPARATOR.join(map(render, values))


def _joined_ints(values: Sequence[Any]) -> str | None:
    return _joined(values, str) if set(map(type, values)) <= _INTS else None


def _bool_text(value: bool) -> str:
    return "t" if value else "f"


def _joined_bools(values: Sequence[Any]) -> str | None:
    return _joined(values, _bool_text) if set(map(type, values)) <= _BOOLS else None


#: Element types (without their length) whose arrays travel as one joined string when
#: their values allow it, and the function deciding that (None: the list). Measured per
#: 1000 values, statement included (psycopg's C dumpers, a prepared ``SELECT``): text
#: 0.4-0.85 -> ~0.1 ms, bigints 0.47 -> 0.36 ms, booleans 0.35 -> 0.08 ms. Left as lists:
#: timestamps (0.62 ms as a list, 1.48 ms joined: ``isoformat`` alone takes 0.87 ms, and
#: the server parses the text) and floats (0.35 ms, 0.69 ms joined by ``repr``).
_JOINED_TYPES = {
    "VARCHAR": joined_text,
    "TEXT": joined_text,
    "INTEGER": _joined_ints,
    "BIGINT": _joined_ints,
    "SMALLINT": _joined_ints,
    "BOOLEAN": _joined_bools,
}


def array_sql(sql_type: str, values: Sequence[Any]) -> tuple[str, Any]:
    """SQL of an array parameter of ``sql_type`` elements holding ``values``, and the
    parameter: one joined string split by ``string_to_array`` and cast to the element
    type when the type and the values allow it (:data:`_JOINED_TYPES`: strs, ints and
    bools with Nones), else the list, which psycopg dumps value by value in Python."""
    render = _JOINED_TYPES.get(sql_type.split("(", 1)[0])
    if render is not None:
        joined = render(values)
        if joined is not None:
            return f"{_SPLIT_TEXT}::{sql_type}[]", joined
    return f"%b::{sql_type}[]", values


#: Columns of an outbox event written at the driver level (mpi and sync both write them).
OUTBOX_COLUMNS = (
    "event_type",
    "aggregate_type",
    "aggregate_id",
    "payload",
    "created_at",
    "next_attempt_at",
    "attempts",
)
OUTBOX_JSON = frozenset({"payload"})


def one_of(session: Session, column: Any, values: Collection[Any]) -> ColumnElement[bool]:
    """``column IN (values)`` as a statement whose text does not depend on how many
    values there are: one parameter, so the statement is compiled, and prepared by the
    driver, once, and no thousand placeholders are rendered and parsed per lookup.

    - PostgreSQL: ``column = ANY(array)``;
    - SQLite: ``column IN (SELECT value FROM json_each(json))`` (:func:`json_ids`); a
      placeholder per value only for values that are not ints or strs.
    """
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(literal(list(values), ARRAY(column.type)))
    array = json_ids(values)
    if array is None:
        return column.in_(values)
    each = func.json_each(literal(array, String())).table_valued("value")
    return column.in_(select(each.c.value))


#: Values per list sent in one statement by :func:`rows_in` (and :func:`chunks`' default).
ROWS_IN_CHUNK = 5000

T = TypeVar("T")


def chunks(values: Sequence[T], size: int | None = None) -> Iterator[Sequence[T]]:
    """``values`` in consecutive slices of ``size`` (:data:`ROWS_IN_CHUNK` by default): the
    lists of ``IN (...)`` lookups and of batched writes."""
    size = size or ROWS_IN_CHUNK
    for start in range(0, len(values), size):
        yield values[start : start + size]


#: Statements rendered by :func:`rows_in`, per template and dialect (a fixed set).
_ROWS_IN_SQL: dict[tuple[str, bool], str] = {}


def in_list(postgresql: bool, values: Collection[Any]) -> tuple[str, Any]:
    """A driver-level ``IN`` over the list ``values`` and its one parameter: ``= ANY(%s)``
    and the list on PostgreSQL, :data:`SQLITE_IN_JSON` and :func:`json_ids` on SQLite, so
    that a statement has one text whatever the list's length."""
    if postgresql:
        return PG_IN_ARRAY, list(values)
    return SQLITE_IN_JSON, json_ids(values)


def rows_in(
    dbapi: Any, postgresql: bool, template: str, values: Sequence[Any], *extra: Any
) -> list[tuple[Any, ...]]:
    """Rows of ``template`` read at the driver level (plain tuples, values as the driver
    returns them): its every ``{in}`` is the list ``values`` (``= ANY(%s)`` on PostgreSQL,
    :data:`SQLITE_IN_JSON` on SQLite, so one statement text whatever the list's length),
    its ``{p}`` placeholders take ``extra`` (in that order, after the lists). Long lists
    are sent in chunks of :data:`ROWS_IN_CHUNK`, their rows concatenated."""
    if not values:
        return []
    key = (template, postgresql)
    sql = _ROWS_IN_SQL.get(key)
    if sql is None:
        marks = {"in": PG_IN_ARRAY, "p": "%s"} if postgresql else {"in": SQLITE_IN_JSON, "p": "?"}
        sql = _ROWS_IN_SQL[key] = template.format(**marks)
    lists = template.count("{in}")
    out: list[tuple[Any, ...]] = []
    for chunk in chunks(values):
        _, listed = in_list(postgresql, chunk)
        if listed is None:
            raise TypeError("rows_in lists hold ints or strs only")
        cursor = dbapi.cursor()
        try:
            cursor.execute(sql, (*[listed] * lists, *extra))
            out.extend(cursor.fetchall())
        finally:
            cursor.close()
    return out


#: Rows from which a PostgreSQL insert of plain columns (strs, ints, bools; no JSON, no
#: RETURNING) goes through ``COPY`` instead of ``INSERT … SELECT … FROM unnest(…)``: the
#: server inserts a COPY's rows in batches (a heap page at a time, one WAL record per
#: page) and parses no arrays. Measured on a 3k-Patient database, rolled back, best of 5
#: (load 6): 43k block keys 1.34 -> 0.95 s (client CPU 31 -> 47 ms), 16k search tokens
#: 0.57 -> 0.49 s (15 -> 26 ms). Left to the INSERT: rows with JSON documents, floats
#: or timestamps, which the writer would render in Python for more than the server
#: saves (13k provenance rows: 0.40 -> 0.36 s, but client CPU 19 -> 73 ms; 3k links
#: unchanged at 0.17 s). Below this many rows the prepared INSERT costs less.
COPY_MIN_ROWS = 100
#: COPY's text-format escapes (https://www.postgresql.org/docs/current/sql-copy.html,
#: "Text Format"): the characters that would end a field or a row, and the backslash.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_COPY_SPECIAL = ("\\", "\t", "\n", "\r")
_COPY_NULL = "\\N"


def _copy_column(values: list[Any], length: int | None) -> list[str] | None:
    """A column's values as COPY text fields, or None when they go otherwise: a type
    psycopg renders, or a str longer than the column's ``length``, which the ``INSERT``'s
    cast to ``VARCHAR(length)`` truncates and COPY would refuse. Nones are
    :data:`_COPY_NULL`."""
    kinds = set(map(type, values))
    nulls = _NONE in kinds
    kinds.discard(_NONE)
    if not kinds:
        return [_COPY_NULL] * len(values)
    if len(kinds) > 1:
        return None
    (kind,) = kinds
    present = [v for v in values if v is not None] if nulls else values
    if kind is str:
        if length is not None and max(map(len, present)) > length:
            return None
        joined = "".join(present)
        if "\x00" in joined:  # not text to PostgreSQL: refused by either statement
            return None
        if any(special in joined for special in _COPY_SPECIAL):
            rendered = [v.translate(_COPY_ESCAPES) for v in present]
        else:
            rendered = present
    elif kind is int:
        rendered = list(map(str, present))
    elif kind is bool:
        rendered = ["t" if v else "f" for v in present]
    else:  # floats, timestamps: psycopg's C dumpers render them for less
        return None
    if not nulls:
        return rendered
    fields = iter(rendered)
    return [_COPY_NULL if v is None else next(fields) for v in values]


def copy_text(arrays: Sequence[list[Any]], lengths: Sequence[int | None]) -> str | None:
    """The COPY text-format data of a table's columns (one list of values per column,
    rows in order; ``lengths``: each column's ``VARCHAR`` length, None if unbounded), or
    None when a column holds values that go otherwise (:func:`_copy_column`: types other
    than str, int and bool, mixed types, over-long or NUL-holding strs)."""
    fields = []
    for values, length in zip(arrays, lengths, strict=True):
        column = _copy_column(values, length)
        if column is None:
            return None
        fields.append(column)
    return "\n".join(map("\t".join, zip(*fields, strict=True))) + "\n"


class BulkWriter:
    """Many rows of one table in one call, in the caller's transaction.

    Values go through :meth:`json` and :meth:`timestamp` first; the writer renders
    the statements for the session's dialect and caches them per shape.
    """

    def __init__(self, session: Session) -> None:
        self.connection = session.connection()
        self.dialect = self.connection.dialect
        self.postgresql = self.dialect.name == "postgresql"
        #: SQL type of each (table, column), compiled once.
        self._types: dict[tuple[str, str], str] = {}

    @staticmethod
    def json(value: Any) -> str:
        """The JSON text of a value for a JSON/JSONB column."""
        return _JSON_ENCODER.encode(value)

    def timestamp(self, value: datetime | None) -> datetime | str | None:
        """A timestamp for a :class:`store.types.UTCDateTime` column (naive means UTC)."""
        if value is None:
            return None
        if value.tzinfo is not UTC:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if self.postgresql:
            return value
        # "YYYY-MM-DD HH:MM:SS.ffffff" without the "+00:00" an aware value renders.
        return value.isoformat(" ", "microseconds")[:_SQLITE_TIMESTAMP_CHARS]

    def insert(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        json_columns: Collection[str] = (),
        returning: Sequence[str] = (),
    ) -> list[tuple[Any, ...]] | None:
        """Insert ``rows`` (tuples in ``columns`` order; ``json_columns`` hold :meth:`json`
        text). Returns the ``returning`` columns of the new rows on PostgreSQL; None on
        SQLite, whose driver returns no rows from a bulk insert (read them back)."""
        if not rows:
            return [] if self.postgresql else None
        if not self.postgresql:
            marks = ", ".join("?" for _ in columns)
            statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            self.connection.exec_driver_sql(statement, list(rows))
            return None
        arrays = self._arrays(columns, rows)
        if (
            not returning
            and not json_columns
            and len(rows) >= COPY_MIN_ROWS
            and self._copy(table, columns, arrays)
        ):
            return []
        single = self._single_valued(arrays)
        unnest, selected, parameters = self._unnest(table, columns, json_columns, single, arrays)
        statement = f"INSERT INTO {table} ({', '.join(columns)}) SELECT {selected} {unnest}"
        if returning:
            statement += f" RETURNING {', '.join(returning)}"
        result = self.connection.exec_driver_sql(statement, parameters)
        return [tuple(row) for row in result] if returning else []

    def _copy(self, table: str, columns: Sequence[str], arrays: Sequence[list[Any]]) -> bool:
        """PostgreSQL: ``rows`` through ``COPY … FROM STDIN`` on the session's connection
        (so in its transaction), as one text built by :func:`copy_text`. False (nothing
        written) when the values do not allow it: the caller inserts them."""
        sql_table = Base.metadata.tables[table]
        lengths = [getattr(sql_table.c[column].type, "length", None) for column in columns]
        data = copy_text(arrays, lengths)
        if data is None:
            return False
        cursor = self.connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                copy.write(data)
        finally:
            cursor.close()
        return True

    @staticmethod
    def _single_valued(arrays: Sequence[list[Any]]) -> frozenset[int]:
        """Positions of the columns holding one value in every row (a page's source, type,
        timestamps…): PostgreSQL inserts send each as one parameter, not an array, which
        psycopg dumps value by value in Python (~1 us each). The first column always
        travels as an array: it gives ``unnest`` its row count."""
        return frozenset(
            i
            for i, values in enumerate(arrays)
            if i and values.count(values[0]) == len(values) and values[0] is not None
        )

    def update_by_id(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
        *,
        json_columns: Collection[str] = (),
    ) -> None:
        """``UPDATE table SET columns… WHERE id = …`` per row: each tuple holds the values
        in ``columns`` order, then the id."""
        if not rows:
            return
        if not self.postgresql:
            assignments = ", ".join(f"{column} = ?" for column in columns)
            statement = f"UPDATE {table} SET {assignments} WHERE id = ?"
            self.connection.exec_driver_sql(statement, list(rows))
            return
        all_columns = (*columns, "id")
        arrays = self._arrays(all_columns, rows)
        unnest, _, parameters = self._unnest(table, all_columns, json_columns, (), arrays)
        last = len(all_columns) - 1
        assignments = ", ".join(
            f"{column} = CAST(u.c{i} AS JSONB)" if column in json_columns else f"{column} = u.c{i}"
            for i, column in enumerate(columns)
        )
        statement = f"UPDATE {table} SET {assignments} {unnest} WHERE {table}.id = u.c{last}"
        self.connection.exec_driver_sql(statement, parameters)

    def _unnest(
        self,
        table: str,
        columns: Sequence[str],
        json_columns: Collection[str],
        single: Collection[int],
        arrays: Sequence[list[Any]],
    ) -> tuple[str, str, tuple[Any, ...]]:
        """``FROM unnest(…) AS u(c0, …)``, the select list reading it, and the parameters
        (the single values of the select list first, then the arrays of ``unnest``): the
        columns at the ``single`` positions are one parameter each, in the select list;
        text arrays travel as one string where :func:`array_sql` allows it (so the text
        depends on the values; statements are short and psycopg prepares each text)."""
        sql_table = Base.metadata.tables[table]
        unnested = []
        aliases = []
        selected = []
        values: list[Any] = []
        sent: list[Any] = []
        for i, column in enumerate(columns):
            sql_type = self._types.get((table, column), "")
            if not sql_type:
                sql_type = sql_table.c[column].type.compile(self.dialect)
                self._types[(table, column)] = sql_type
            if column in json_columns:
                sql_type = "TEXT"
            if i in single:
                value = f"CAST(%b AS {sql_type})"
                values.append(arrays[i][0])
            else:
                value = f"u.c{i}"
                array, parameter = array_sql(sql_type, arrays[i])
                unnested.append(array)
                sent.append(parameter)
                aliases.append(f"c{i}")
            selected.append(f"CAST({value} AS JSONB)" if column in json_columns else value)
        return (
            f"FROM unnest({', '.join(unnested)}) AS u({', '.join(aliases)})",
            ", ".join(selected),
            (*values, *sent),
        )

    @staticmethod
    def _arrays(columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> tuple[list[Any], ...]:
        arrays = tuple(list(values) for values in zip(*rows, strict=True))
        if len(arrays) != len(columns):
            raise ValueError(f"rows have {len(arrays)} values, expected {len(columns)}")
        return arrays


def update_where(
    writer: BulkWriter,
    table: str,
    columns: Sequence[str],
    keys: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    *,
    changed: Sequence[str] = (),
) -> None:
    """``UPDATE table SET columns… WHERE key = … AND …`` per row, through ``writer``: each
    tuple holds the values in ``columns`` order, then those of ``keys`` (no JSON columns).
    ``changed``: columns of ``columns`` a row must change; a stored row that holds its
    values of all of them already is left as it is (its other columns too).

    SQLite: ``executemany``; PostgreSQL: one ``UPDATE … FROM unnest(…)``. The keys should
    be indexed (each row is one lookup)."""
    if not rows:
        return
    guarded = [columns.index(column) for column in changed]
    if not writer.postgresql:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        matches = " AND ".join(f"{key} = ?" for key in keys)
        if guarded:
            differs = " OR ".join(f"{columns[i]} IS NOT ?" for i in guarded)
            matches = f"{matches} AND ({differs})"
            rows = [(*row, *(row[i] for i in guarded)) for row in rows]
        writer.connection.exec_driver_sql(
            f"UPDATE {table} SET {assignments} WHERE {matches}", list(rows)
        )
        return
    all_columns = (*columns, *keys)
    arrays = writer._arrays(all_columns, rows)
    unnest, _, parameters = writer._unnest(table, all_columns, (), (), arrays)
    assignments = ", ".join(f"{column} = u.c{i}" for i, column in enumerate(columns))
    matches = " AND ".join(f"{table}.{key} = u.c{len(columns) + i}" for i, key in enumerate(keys))
    if guarded:
        differs = " OR ".join(f"{table}.{columns[i]} IS DISTINCT FROM u.c{i}" for i in guarded)
        matches = f"{matches} AND ({differs})"
    statement = f"UPDATE {table} SET {assignments} {unnest} WHERE {matches}"
    writer.connection.exec_driver_sql(statement, parameters)
