"""links, review items and golden versions: no row-by-row keys; a golden record still
referenced by a link or a review item cannot be deleted

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 22:40:00

**Foreign keys.** Migrations 0002 and 0003 dropped the keys PostgreSQL checked with one
trigger query per inserted row (``SELECT 1 FROM parent WHERE id = $1 FOR KEY SHARE``,
which also locks, and so writes, the parent row). These are the last ones a sync pays
per Patient: every record gets a ``link`` (two keys), every golden record written gets
a ``golden_patient_version`` (one), and a possible match a ``review_item`` (three).
Measured on a 3k-Patient database (3111 links; PostgreSQL 15, same machine, rolled back
and repeated): inserting the links took 250-274 ms with their keys, 63-66 ms without;
under ``auto_explain`` the link insert was the third most costly statement of a
5k-Patient load (1.5 s of 14.6 s).

They guard nothing the application can get wrong, because of how the rows are made:

- ``link.source_record_id``, ``review_item.source_record_id``: written by the MPI for
  the records of the batch it resolves, which the same transaction inserted or read
  (``mpi.resolve``), or by a steward's operation on a record it has just read
  (``mpi.operations``); the link's column stays unique.
- ``link.golden_id``, ``review_item.golden_id``, ``review_item.other_golden_id``: a
  golden record the same transaction created or read (a merge's survivor is read before
  links are repointed to it).
- ``golden_patient_version.golden_id``: the version is copied from the golden record's
  own row by the statement that writes it (``store.golden``: ``INSERT … SELECT … FROM
  golden_patient``), so its parent exists by construction.

No code deletes a source record or a golden record (migration 0002). What the keys did
when one is deleted by hand is still done, by the parents' ``AFTER DELETE`` triggers
(:mod:`store.migrations.triggers`), made again here with more statements:

- a deleted record takes its link and its review items (``ON DELETE CASCADE``);
- a deleted golden record takes its versions (``ON DELETE CASCADE``), and the delete is
  refused while a link or a review item refers to it (the keys had no ``ON DELETE``
  action: PostgreSQL raised ``foreign_key_violation``, SQLite ``FOREIGN KEY constraint
  failed``; the trigger raises the same, so both still surface as an integrity error).

Kept: ``match_decision`` (a steward's decisions, a few rows), ``golden_patient.merged_into``
(written by merges only), and the keys of the configuration tables.

SQLite drops a key by rebuilding the table (Alembic's batch mode; ``env.py`` runs
migrations with its foreign keys off and checks them afterwards). The parents' triggers
are on the parent tables, which are not rebuilt.
"""

from __future__ import annotations

from alembic import op

from store.migrations.triggers import (
    create_delete_trigger,
    drop_delete_trigger,
    refuse_if_referenced,
)

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: The dropped keys: (table, column, referred table, ON DELETE action of the old key).
DROPPED_KEYS = (
    ("link", "source_record_id", "source_record", "CASCADE"),
    ("link", "golden_id", "golden_patient", None),
    ("golden_patient_version", "golden_id", "golden_patient", "CASCADE"),
    ("review_item", "source_record_id", "source_record", "CASCADE"),
    ("review_item", "golden_id", "golden_patient", None),
    ("review_item", "other_golden_id", "golden_patient", None),
)
#: The record's trigger as 0002 made it (0003 made it again after SQLite's rebuild).
RECORD_CASCADE_0003 = (
    "DELETE FROM encounter WHERE source_record_id = OLD.id",
    "DELETE FROM block_key WHERE source_record_id = OLD.id",
    "UPDATE field_provenance SET source_record_id = NULL WHERE source_record_id = OLD.id",
)
#: ... and with the cascades of the keys dropped here.
RECORD_CASCADE = (
    *RECORD_CASCADE_0003,
    "DELETE FROM link WHERE source_record_id = OLD.id",
    "DELETE FROM review_item WHERE source_record_id = OLD.id",
)
#: The golden record's trigger as 0002 made it.
GOLDEN_CASCADE_0002 = (
    "DELETE FROM field_provenance WHERE golden_id = OLD.id",
    "DELETE FROM golden_search_token WHERE golden_id = OLD.id",
)
#: (table, column) whose rows refuse the delete of the golden record they name.
GOLDEN_REFERENCES = (
    ("link", "golden_id"),
    ("review_item", "golden_id"),
    ("review_item", "other_golden_id"),
)


def _key_name(table: str, column: str, referred: str) -> str:
    """The name the models' naming convention gave the key (store.models)."""
    return f"fk_{table}_{column}_{referred}"


def _triggers(record: tuple[str, ...], golden: tuple[str, ...], postgresql: bool) -> None:
    """Make the record's and the golden record's triggers again, with these statements."""
    drop_delete_trigger("source_record", postgresql)
    drop_delete_trigger("golden_patient", postgresql)
    create_delete_trigger("source_record", record, postgresql)
    create_delete_trigger("golden_patient", golden, postgresql)


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in dict.fromkeys(table for table, *_ in DROPPED_KEYS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for key_table, column, referred, _ in DROPPED_KEYS:
                if key_table == table:
                    batch_op.drop_constraint(_key_name(table, column, referred), type_="foreignkey")
    golden = (
        refuse_if_referenced(GOLDEN_REFERENCES, postgresql),
        "DELETE FROM golden_patient_version WHERE golden_id = OLD.id",
        *GOLDEN_CASCADE_0002,
    )
    _triggers(RECORD_CASCADE, golden, postgresql)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    _triggers(RECORD_CASCADE_0003, GOLDEN_CASCADE_0002, postgresql)
    # Rows of a record deleted while no key checked them would break the keys: they go
    # as the keys' cascades would have taken them. (A golden record cannot be deleted
    # while referenced; a row naming one that never existed fails the downgrade rather
    # than a link, a decision, being dropped silently.)
    op.execute("DELETE FROM link WHERE source_record_id NOT IN (SELECT id FROM source_record)")
    op.execute(
        "DELETE FROM review_item WHERE source_record_id NOT IN (SELECT id FROM source_record)"
    )
    op.execute(
        "DELETE FROM golden_patient_version WHERE golden_id NOT IN (SELECT id FROM golden_patient)"
    )
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
