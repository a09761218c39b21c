"""derived rows: deletes cascade by trigger, inserts are not checked row by row; no
planner statistics of JSON documents

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 15:10:00

**Foreign keys.** PostgreSQL checks a foreign key with one trigger query per inserted row,
which locks the referenced row (``FOR KEY SHARE``: the parent's page is written again).
A sync inserts derived rows by the thousand: about three ``encounter`` rows per Patient,
and per Patient ~14 ``block_key``, ~7 ``field_provenance`` (rewritten with every golden
version) and ~5 ``golden_search_token`` rows. Measured on a 10k-Patient load (3
Encounters each; PostgreSQL 15, back to back, same machine):

- with a page of 1000 new Encounters each key of ``encounter`` cost about as much as the
  insert itself (``auto_explain``: insert 11 ms, the three key triggers 31 + 20 + 20 ms);
  the Encounter insert went from 4.3 to 1.7 s when its two derived keys were dropped,
  and a page's write (records, encounters, events; ``sync.encounters``) from 2.5-2.6 to
  1.3-1.8 s more without the third one (6.6-6.8k -> 6.7-9.3k Encounters/s);
- ``block_key`` inserts 6.0 -> 1.3-1.6 s (145k rows), ``field_provenance`` 5.6-5.9 ->
  0.7-0.9 s (71k rows), ``golden_search_token`` 2.6 -> under 0.9 s (53k rows): Patients
  270-290/s -> 370-470/s.

These keys guard nothing the application can get wrong, because of how the rows are
made:

- ``encounter.source_record_id``: the encounter row is inserted by the statement that
  inserts its record and takes the record's id from that insert's ``RETURNING`` (or, for a
  record stored before, from a lookup in the same transaction); records are never deleted
  (below), and the column stays unique.
- ``encounter.source_id -> source``: a copy of the source of the encounter's own record
  (``sync.encounters`` writes both from the page's one source).
- ``encounter.golden_id -> golden_patient`` (no ``ON DELETE`` action): derived,
  recomputed whenever the patient is (re)linked, and always read in the same transaction
  from a ``link`` row (whose key to ``golden_patient`` stays) or from the MPI's resolution
  of that link.
- ``block_key.source_record_id``: written by the MPI only for the records of the batch it
  resolves, in the transaction that inserted or read them, and deleted with them when a
  record is re-keyed.
- ``field_provenance.golden_id``, ``golden_search_token.golden_id``: written only together
  with their golden record (``mpi.storage.write_goldens``, ``store.golden``), in the same
  transaction, which rewrites them at each new version (the provenance whole, the search
  tokens where they changed).
- ``field_provenance.source_record_id``: one of the members just read to build that
  golden version.

No code deletes a golden record (a merge keeps the loser as ``status = 'merged'`` so its
id keeps answering; DESIGN.md, "The golden record") or a source record (a deleted
resource is ``status = 'deleted'``). So the keys' ``ON DELETE`` actions only ever served a
manual delete; they are kept, as ``AFTER DELETE`` row triggers on the parent tables
(:data:`CASCADES`) that do what the keys did: a trigger on the parent costs nothing when
children are inserted. Deleting a source still deletes everything of it: its records go
by their own key's cascade, and each fires the record's trigger.

Kept: ``source_record.source_id`` (it costs as much per row as the others, but SQLite
can only drop it by rebuilding ``source_record``, and with foreign keys on, dropping the
old table runs the ``ON DELETE CASCADE`` of every table that references it: ``link``,
``review_item``, ``match_decision``); ``link``, ``review_item``, ``match_decision``: a
few rows per record, and they record decisions.

**Statistics.** ``store.db.StatisticsRefresher`` analyzes the sync tables while they are
loaded. ANALYZE computes statistics for every column of its sample, and for the JSON
documents (``raw``, ``normalized``, ``resource``, provenance ``value``…) that means
detoasting and comparing whole documents no query ever filters on: ``SET STATISTICS 0``
skips them (``ANALYZE source_record`` 64 -> 45 ms, ``field_provenance`` 170 -> 104 ms at
10k Patients). PostgreSQL only; SQLite keeps no such statistics.
"""

from __future__ import annotations

from alembic import op

from store.migrations.triggers import create_delete_trigger, drop_delete_trigger

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: The dropped keys: (table, column, referred table, ON DELETE action of the old key).
DROPPED_KEYS = (
    ("encounter", "source_record_id", "source_record", "CASCADE"),
    ("encounter", "source_id", "source", "CASCADE"),
    ("encounter", "golden_id", "golden_patient", None),
    ("block_key", "source_record_id", "source_record", "CASCADE"),
    ("field_provenance", "golden_id", "golden_patient", "CASCADE"),
    ("field_provenance", "source_record_id", "source_record", "SET NULL"),
    ("golden_search_token", "golden_id", "golden_patient", "CASCADE"),
)
#: Parent table -> the statements its ``AFTER DELETE`` trigger runs for the deleted row
#: (``OLD``): the ``ON DELETE`` actions of the dropped keys. ``encounter.source_id``'s
#: cascade is the record's (see the module docstring); ``encounter.golden_id`` had none.
#: A source's records, deleted by their key's cascade, fire the record's trigger in turn.
CASCADES = {
    "source_record": (
        "DELETE FROM encounter WHERE source_record_id = OLD.id",
        "DELETE FROM block_key WHERE source_record_id = OLD.id",
        "UPDATE field_provenance SET source_record_id = NULL WHERE source_record_id = OLD.id",
    ),
    "golden_patient": (
        "DELETE FROM field_provenance WHERE golden_id = OLD.id",
        "DELETE FROM golden_search_token WHERE golden_id = OLD.id",
    ),
}
#: (table, column): JSON documents no statement filters or joins on.
UNANALYZED_COLUMNS = (
    ("source_record", "raw"),
    ("source_record", "normalized"),
    ("source_record", "error"),
    ("encounter", "resource"),
    ("golden_patient", "resource"),
    ("golden_patient_version", "resource"),
    ("field_provenance", "value"),
    ("link", "explanation"),
    ("link_history", "explanation"),
    ("link_history", "snapshot"),
    ("outbox", "payload"),
)
#: PostgreSQL's "use the default statistics target" value of a column.
DEFAULT_STATISTICS = -1


def _key_name(table: str, column: str, referred: str) -> str:
    """The name the models' naming convention gave the key (store.models)."""
    return f"fk_{table}_{column}_{referred}"


def _create_cascades(postgresql: bool) -> None:
    for parent, statements in CASCADES.items():
        create_delete_trigger(parent, statements, postgresql)


def _drop_cascades(postgresql: bool) -> None:
    for parent in CASCADES:
        drop_delete_trigger(parent, postgresql)


def _statistics(target: int) -> None:
    for table, column in UNANALYZED_COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS {target}")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in dict.fromkeys(table for table, *_ in DROPPED_KEYS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for key_table, column, referred, _ in DROPPED_KEYS:
                if key_table == table:
                    name = _key_name(table, column, referred)
                    batch_op.drop_constraint(name, type_="foreignkey")
    _create_cascades(postgresql)
    if postgresql:
        _statistics(0)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        _statistics(DEFAULT_STATISTICS)
    _drop_cascades(postgresql)
    for table in dict.fromkeys(table for table, *_ in DROPPED_KEYS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for key_table, column, referred, on_delete in DROPPED_KEYS:
                if key_table == table:
                    batch_op.create_foreign_key(
                        _key_name(table, column, referred),
                        referred,
                        [column],
                        ["id"],
                        ondelete=on_delete,
                    )
