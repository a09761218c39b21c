"""encounter: no foreign keys on its derived columns; no planner statistics of JSON documents

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 15:10:00

**Foreign keys dropped** (``encounter`` is the most numerous table a sync writes: about
three rows per Patient). PostgreSQL checks a foreign key with one trigger query per
inserted row; with a page of 1000 new Encounters each of the three keys cost about as
much as the insert itself (``auto_explain``: insert 11 ms, the triggers 31 + 20 + 20 ms),
and the Encounter insert was the largest statement of an Encounter page. Two of them
guard nothing the application can get wrong:

- ``encounter.source_id -> source``: a copy of the source of the encounter's own source
  record (``sync.encounters`` writes both from the page's one source). The key that
  stays, ``encounter.source_record_id -> source_record ON DELETE CASCADE``, already
  ties every encounter to an existing record, whose ``source_id -> source ON DELETE
  CASCADE`` key ties it to its source; deleting a source still deletes its encounters,
  through their records.
- ``encounter.golden_id -> golden_patient`` (no ``ON DELETE`` action): the golden id is
  derived, recomputed whenever the patient is (re)linked, and always read in the same
  transaction from a ``link`` row (whose own key to ``golden_patient`` stays) or from the
  MPI's resolution of that link. No code deletes a golden record: a merge keeps the
  loser as ``status = 'merged'`` so that its id keeps answering (see DESIGN.md, "The
  golden record"), so the check could never fail.

**Statistics.** ``store.db.StatisticsRefresher`` analyzes the sync tables while they are
loaded. ANALYZE computes statistics for every column of its sample, and for the JSON
documents (``raw``, ``normalized``, ``resource``, provenance ``value``…) that means
detoasting and comparing whole documents no query ever filters on: ``SET STATISTICS 0``
skips them (``ANALYZE source_record`` 64 -> 45 ms, ``field_provenance`` 170 -> 104 ms at
10k Patients). PostgreSQL only; SQLite keeps no such statistics.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

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


def _statistics(target: int) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in UNANALYZED_COLUMNS:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS {target}")


def upgrade() -> None:
    with op.batch_alter_table("encounter", schema=None) as batch_op:
        batch_op.drop_constraint("fk_encounter_source_id_source", type_="foreignkey")
        batch_op.drop_constraint("fk_encounter_golden_id_golden_patient", type_="foreignkey")
    _statistics(0)


def downgrade() -> None:
    _statistics(DEFAULT_STATISTICS)
    with op.batch_alter_table("encounter", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_encounter_golden_id_golden_patient", "golden_patient", ["golden_id"], ["id"]
        )
        batch_op.create_foreign_key(
            "fk_encounter_source_id_source",
            "source",
            ["source_id"],
            ["id"],
            ondelete="CASCADE",
        )
