"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

#: JSON on SQLite, JSONB on PostgreSQL.
JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on both backends.

    SQLite has no time zones, so values are stored naive-UTC and handed back aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return as_utc(value)


def as_utc(value: datetime | None) -> datetime | None:
    """``value`` aware and in UTC, as :class:`UTCDateTime` hands it back (a naive value
    is UTC already: that is how SQLite stores them)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def stored_time(value: Any) -> datetime | None:
    """A timestamp read at the driver level, as :class:`UTCDateTime` hands it back: aware,
    in UTC (SQLite's driver returns the stored naive-UTC text, PostgreSQL's an aware
    datetime)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return as_utc(value)


def utcnow() -> datetime:
    return datetime.now(UTC)


def fhir_instant(value: datetime | None = None) -> str:
    """A FHIR ``instant`` (https://hl7.org/fhir/R4/datatypes.html#instant): ``value`` (now
    when None) in UTC, to the millisecond, with ``Z``."""
    moment = as_utc(value) or utcnow()
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
