"""source records: no row-by-row key to their source, a column for stored match features,
lz4 for the JSON documents

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 17:40:00

**``source_record.source_id``.** Migration 0002 dropped the foreign keys PostgreSQL checked
with one trigger query per inserted derived row, and kept this one because SQLite can only
drop it by rebuilding ``source_record``. It costs the same: every record a sync inserts
(one per Patient and one per Encounter) runs ``SELECT 1 FROM source WHERE id = $1 FOR KEY
SHARE``, locking the one source row of the page again and again; under ``auto_explain``
it was ~30% of the PostgreSQL statement that writes a page of new Encounters. It guards
nothing the application can get wrong: a source record is written only by a sync, an
intake or an import of its source, which read the source row first, and no code deletes a
source. Its ``ON DELETE CASCADE`` (a manual ``DELETE FROM source``) is kept as an ``AFTER
DELETE`` trigger on ``source``, which deletes the source's records; each of those fires
the record's own trigger (0002), and ``link``, ``review_item`` and ``match_decision`` keep
their keys to the record and its cascade.

SQLite rebuilds the table (Alembic's batch mode), and puts the small columns before the
documents (:data:`SMALL_FIRST`). SQLite stores a row's values in column order and a
Patient record's ``raw`` and ``normalized`` spill to overflow pages, so reading a column
stored after them (``status``, the times, the new ``match_features``, all read for every
candidate or page record) walked those pages: a small column read in 2.7 us per row
before the documents, 6.4-9.8 us after them (measured on a copy). ``store/migrations/env.py`` runs
migrations with SQLite's foreign keys off: with them on, dropping the old table would
run the ``ON DELETE CASCADE`` of every table that references it and empty ``link``,
``review_item`` and ``match_decision``. It checks the keys afterwards
(``PRAGMA foreign_key_check``). The rebuild drops the table's trigger, which is made again.

**``source_record.match_features``.** A Patient's match features in ``mpi.features``'
compact, versioned text form. The MPI compares a new record with candidates read from
the database; decoding a candidate's ``normalized`` JSON (~1.6 KB) and extracting its
features again cost more than anything else read per candidate. Null until written (by
the next sync of the record); readers then fall back to ``normalized``.

**lz4.** PostgreSQL compresses a value of a row over ~2 KB. A Patient record's ``raw`` and
``normalized`` together are over it; pglz is PostgreSQL's default. Measured on the 26k
Patient records of a 25k-Patient load: inserting their two documents took 1.16 s with
pglz, 0.62 s with lz4, 0.58 s uncompressed, and the table was the same size with lz4
(55 MB) as with pglz (54 MB); uncompressed it was 75 MB. Applied only where the server was
built with lz4 (Debian's and the official images are), to values written from now on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from store.migrations.triggers import create_delete_trigger, drop_delete_trigger

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: The dropped key's name (the models' naming convention, store.models).
SOURCE_KEY = "fk_source_record_source_id_source"
#: The trigger that does the dropped key's ``ON DELETE CASCADE``.
SOURCE_CASCADE = "DELETE FROM source_record WHERE source_id = OLD.id"
#: The record's own trigger of migration 0002, made again after SQLite's rebuild.
RECORD_CASCADE = (
    "DELETE FROM encounter WHERE source_record_id = OLD.id",
    "DELETE FROM block_key WHERE source_record_id = OLD.id",
    "UPDATE field_provenance SET source_record_id = NULL WHERE source_record_id = OLD.id",
)
#: SQLite: the order of the rebuilt table's columns, the small ones before the documents.
SMALL_FIRST: tuple[str, ...] = (
    "id",
    "source_id",
    "resource_type",
    "resource_id",
    "version_id",
    "last_updated",
    "content_hash",
    "status",
    "received_at",
    "updated_at",
    "match_features",
    "raw",
    "normalized",
    "error",
)
#: SQLite: the order of 0002, made again by the downgrade.
ORDER_0002: tuple[str, ...] = (
    "id",
    "source_id",
    "resource_type",
    "resource_id",
    "version_id",
    "last_updated",
    "content_hash",
    "raw",
    "normalized",
    "status",
    "error",
    "received_at",
    "updated_at",
)
#: (table, column): JSON documents compressed with lz4 on PostgreSQL.
LZ4_COLUMNS = (
    ("source_record", "raw"),
    ("source_record", "normalized"),
    ("golden_patient", "resource"),
    ("golden_patient_version", "resource"),
    ("encounter", "resource"),
)


def _lz4_available() -> bool:
    return bool(
        op.get_bind()
        .exec_driver_sql(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
        .scalar()
    )


def _compression(method: str) -> None:
    for table, column in LZ4_COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION {method}")


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    order = [] if postgresql else [SMALL_FIRST]
    with op.batch_alter_table("source_record", schema=None, partial_reordering=order) as batch_op:
        batch_op.drop_constraint(SOURCE_KEY, type_="foreignkey")
        batch_op.add_column(sa.Column("match_features", sa.Text(), nullable=True))
    if not postgresql:  # the rebuilt table lost its trigger
        create_delete_trigger("source_record", RECORD_CASCADE, postgresql)
    create_delete_trigger("source", (SOURCE_CASCADE,), postgresql)
    if postgresql and _lz4_available():
        _compression("lz4")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        _compression("DEFAULT")
    drop_delete_trigger("source", postgresql)
    # The records of a deleted source would have lost their key: gone with the source.
    op.execute("DELETE FROM source_record WHERE source_id NOT IN (SELECT id FROM source)")
    order = [] if postgresql else [ORDER_0002]
    with op.batch_alter_table("source_record", schema=None, partial_reordering=order) as batch_op:
        batch_op.drop_column("match_features")
        batch_op.create_foreign_key(SOURCE_KEY, "source", ["source_id"], ["id"], ondelete="CASCADE")
    if not postgresql:
        create_delete_trigger("source_record", RECORD_CASCADE, postgresql)
