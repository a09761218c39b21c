"""The resolver's reads, at the driver level.

One record resolved in real time reads a handful of small result sets (its links, the
sizes and members of its block keys, the golden records of its candidates with their
members). Built as SQLAlchemy Core statements, each of those cost ~100-300 us of Python
per execution (statement construction, cache key, ``IN`` expansion, result processing),
more than SQLite takes to answer them. :class:`Reads` sends plain SQL strings, one per
template and dialect whatever the length of the lists, straight to the DBAPI cursor
(``Connection.exec_driver_sql``) and gets plain tuples back:

- SQLite: ``IN (SELECT value FROM json_each(?))`` with the list as one JSON array
  parameter (:func:`store.bulk.json_ids`): a placeholder per value made a new statement
  text, prepared statement and cache entry for almost every list length;
- PostgreSQL: ``= ANY(%s)`` with one array parameter (no placeholder list to parse, see
  :func:`store.bulk.one_of`).

Values come back as the driver returns them: JSON columns are read as text
(``CAST(… AS TEXT)`` on PostgreSQL) and decoded only when used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy.orm import Session

from mpi.model import MatchModel
from mpi.storage import _model_cache, load_active_model
from store.background import Background
from store.bulk import joined_text, rows_in

_BLOCK_MEMBERS = (
    "SELECT s.key, s.n, b.source_record_id FROM "
    "(SELECT key, count(*) AS n FROM block_key WHERE key {in} GROUP BY key) s "
    "LEFT JOIN block_key b ON b.key = s.key AND s.n <= {p}"
)
#: The same on PostgreSQL: per distinct key (``{keys}``, a text array) one index scan
#: that counts the key's rows and gathers its members into an array, NULL for a key
#: with more than ``%s`` members (a key without rows gives none). Joining ``block_key``
#: on ``key = ANY(list)`` instead (a first scan counting, a second reading members) was
#: planned from ~5k keys on as a sequential scan of the whole table, twice per list of
#: 5,000 keys: its cost grew with the table, page after page. With migration 0005's
#: index (``key`` INCLUDE ``source_record_id``) the scan reads the index only, where
#: the visibility map allows (:class:`store.db.StatisticsRefresher` vacuums the table).
_BLOCK_MEMBERS_PG = (
    "SELECT k.key, s.n, CASE WHEN s.n <= %s THEN s.members END "
    "FROM (SELECT DISTINCT unnest({keys}) AS key) k "
    "CROSS JOIN LATERAL (SELECT count(*) AS n, array_agg(b.source_record_id) AS members "
    "FROM block_key b WHERE b.key = k.key) s WHERE s.n > 0"
)
#: The keys as one string split by the server (:func:`store.bulk.joined_text`: psycopg
#: dumps a list value by value in Python), or as a list when they cannot travel so.
_BLOCK_MEMBERS_PG_JOINED = _BLOCK_MEMBERS_PG.format(
    keys="string_to_array(CAST(%s AS TEXT), chr(31), chr(30))"
)
_BLOCK_MEMBERS_PG_LIST = _BLOCK_MEMBERS_PG.format(keys="CAST(%s AS TEXT[])")


class Reads:
    """Driver-level reads in the session's transaction (pending ORM changes are flushed
    first, as ``Session.execute`` would).

    :attr:`background` may run a write of the same transaction (:mod:`store.background`):
    every read waits for it first, and so must whoever uses the session or its connection
    otherwise (:meth:`settle`)."""

    def __init__(self, session: Session) -> None:
        session.flush()
        self.session = session
        connection = session.connection()
        self.postgresql = connection.dialect.name == "postgresql"
        #: The DBAPI connection of the session's transaction.
        self.dbapi = connection.connection.dbapi_connection
        #: A write of the transaction running while the caller decides (see
        #: :func:`mpi.resolve._resolve_chunk`).
        self.background = Background("mpi-block-keys")

    def settle(self) -> None:
        """Wait for the :attr:`background` write (raising its error): the connection is
        the caller's again."""
        self.background.wait()

    def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        self.background.wait()
        assert self.dbapi is not None
        cursor = self.dbapi.cursor()
        try:
            cursor.execute(sql, params)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def _rows(self, template: str, values: Sequence[Any], *extra: Any) -> list[tuple[Any, ...]]:
        """Rows of ``template`` for the list ``values`` (:func:`store.bulk.rows_in`)."""
        if not values:
            return []
        self.background.wait()
        return rows_in(self.dbapi, self.postgresql, template, values, *extra)

    def links(self, records: Sequence[int]) -> list[tuple[int, str, str, float | None, str]]:
        """(record, golden id, grade, score, method) of the stored links of ``records``."""
        return self._rows(
            "SELECT source_record_id, golden_id, grade, score, method FROM link "
            "WHERE source_record_id {in}",
            records,
        )

    def block_members(self, keys: Sequence[str], limit: int) -> list[tuple[str, int, int | None]]:
        """(key, size, member) of ``keys`` in one statement: a row per member of each key
        with at most ``limit`` members, one row with member None for a larger key, in
        no particular order (PostgreSQL: :data:`_BLOCK_MEMBERS_PG`, the whole list at
        once)."""
        if not self.postgresql:
            return self._rows(_BLOCK_MEMBERS, keys, limit)
        if not keys:
            return []
        joined = joined_text(keys)
        if joined is None:
            found = self._fetch(_BLOCK_MEMBERS_PG_LIST, (limit, list(keys)))
        else:
            found = self._fetch(_BLOCK_MEMBERS_PG_JOINED, (limit, joined))
        out: list[tuple[str, int, int | None]] = []
        for key, size, members in found:
            if members is None:
                out.append((key, size, None))
            else:
                out.extend([(key, size, member) for member in members])
        return out

    def block_sizes(self, keys: Sequence[str]) -> list[tuple[str, int]]:
        """(key, members) of each of ``keys`` that has members."""
        return self._rows(
            "SELECT key, count(*) FROM block_key WHERE key {in} GROUP BY key",
            keys,
        )

    def decisions(self, records: Sequence[int]) -> list[tuple[int, int, str]]:
        """(record a, record b, decision) of steward decisions on ``records``, oldest
        first (per chunk of records)."""
        return self._rows(
            "SELECT record_a_id, record_b_id, decision FROM match_decision "
            "WHERE record_a_id {in} OR record_b_id {in} ORDER BY id",
            records,
        )

    def declined_pairs(self, records: Sequence[int]) -> list[tuple[int, int]]:
        """(record a, record b) of the steward "no-match" decisions whose record a is one
        of ``records`` (the caller checks record b)."""
        return self._rows(
            "SELECT record_a_id, record_b_id FROM match_decision "
            "WHERE decision = 'no-match' AND record_a_id {in}",
            records,
        )

    def patient_keys(self, records: Sequence[int]) -> list[tuple[int, int, str]]:
        """(record, source id, resource id) of ``records``."""
        return self._rows(
            "SELECT id, source_id, resource_id FROM source_record WHERE id {in}", records
        )

    def encounters_of_patients(
        self, source_id: int, patients: Sequence[str]
    ) -> list[tuple[int, str | None, str | None, str, str]]:
        """(encounter id, patient resource id, golden id, the encounter's source resource
        id, its record's status) of the Encounters of ``source_id``'s Patients
        ``patients``."""
        return self._rows(
            "SELECT e.id, e.patient_resource_id, e.golden_id, s.resource_id, s.status "
            "FROM encounter e JOIN source_record s ON s.id = e.source_record_id "
            "WHERE e.patient_resource_id {in} AND e.source_id = {p}",
            patients,
            source_id,
        )

    def active_goldens(self, records: Sequence[int]) -> list[tuple[int, str]]:
        """(record, golden id) of ``records`` linked to an active golden record."""
        return self._rows(
            "SELECT l.source_record_id, l.golden_id FROM link l "
            "JOIN golden_patient g ON g.id = l.golden_id "
            "WHERE g.status = 'active' AND l.source_record_id {in}",
            records,
        )

    def members(
        self, goldens: Sequence[str]
    ) -> list[tuple[str, int, str, float | None, str, str, str | None, str | None, str | None]]:
        """(golden id, record, grade, score, golden status, record status, content hash,
        encoded match features, normalized JSON text) of every record linked to
        ``goldens``, in link order. The features are ~250 bytes
        (:func:`mpi.features.encode_features`); the normalized JSON (~1.6 KB) is read only
        where there are none (records stored before migration 0003): otherwise it is
        NULL here, and :meth:`normalized` reads it for the records that need it."""
        normalized = "CAST(s.normalized AS TEXT)" if self.postgresql else "s.normalized"
        return self._rows(
            "SELECT l.golden_id, l.source_record_id, l.grade, l.score, g.status, s.status, "
            "s.content_hash, s.match_features, "
            f"CASE WHEN s.match_features IS NULL THEN {normalized} END FROM link l "
            "JOIN golden_patient g ON g.id = l.golden_id "
            "JOIN source_record s ON s.id = l.source_record_id "
            "WHERE l.golden_id {in} ORDER BY l.golden_id, l.id",
            goldens,
        )

    def normalized(self, records: Sequence[int]) -> list[tuple[int, str | None]]:
        """(record, normalized JSON text) of ``records``."""
        normalized = "CAST(normalized AS TEXT)" if self.postgresql else "normalized"
        return self._rows(f"SELECT id, {normalized} FROM source_record WHERE id {{in}}", records)

    def active_model(self) -> MatchModel:
        """The active trained model (the built-in priors when none was trained): one
        small read while the active row is the one already loaded by this process."""
        rows = self._fetch(
            "SELECT id, version FROM match_model WHERE active ORDER BY id DESC LIMIT 1"
        )
        if not rows:
            return MatchModel.default()
        model = _model_cache.get((rows[0][0], rows[0][1]))
        return model if model is not None else load_active_model(self.session)


def decode(text: str | dict[str, Any] | None) -> dict[str, Any]:
    """A JSON column read by :class:`Reads` (text; a dict if the driver decoded it)."""
    if text is None:
        return {}
    value = json.loads(text) if isinstance(text, str) else text
    return value or {}


def decode_for_features(text: str | dict[str, Any] | None) -> dict[str, Any]:
    """:func:`decode` for :func:`mpi.features.features_from_normalized` only: orjson parses
    several times faster, into the same values but for integers beyond 64 bits, which
    it returns as floats (an extension's decimal could hold one; features read strings,
    flags and birth date parts); what it refuses (``NaN``…) goes to ``json.loads``."""
    if not isinstance(text, str):
        return decode(text)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = json.loads(text)
    return value or {}
