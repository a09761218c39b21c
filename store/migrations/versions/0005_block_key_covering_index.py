"""block_key: the key index carries the record (PostgreSQL), so a key's members are read
from the index alone

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 01:30:00

Every page of a sync reads, for each of its ~14k block keys, the key's size and members
(``mpi.reads.Reads.block_members``: one index scan per key). Through ``ix_block_key_key``
on ``key`` alone each member found is a heap fetch: ~3 rows per key, on pages spread
over the whole table, ~18k page visits per call. With ``source_record_id`` in the index
(``INCLUDE``, https://www.postgresql.org/docs/current/indexes-index-only-scans.html) the
scan reads the index only, for the heap pages the visibility map marks all-visible:
``store.db.StatisticsRefresher`` vacuums ``block_key`` as a load goes, since autovacuum
may be off. Measured on the table of a 25k-Patient load (360k rows, vacuumed), one
call's 6,314 keys: 234 ms (bitmap heap scans, 37k buffers) -> 56 ms (index only, 19k
buffers).

SQLite is left as it is: its index entries already end with the rowid and its
statement reads the members through it; the MPI's SQLite statement is unchanged.
The index keeps its name and its key column, so lookups by ``key`` are as before.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_INDEX = "ix_block_key_key"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(_INDEX, table_name="block_key")
    op.create_index(
        _INDEX, "block_key", ["key"], unique=False, postgresql_include=["source_record_id"]
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index(_INDEX, table_name="block_key")
    op.create_index(_INDEX, "block_key", ["key"], unique=False)
