"""``AFTER DELETE`` row triggers that stand in for dropped foreign keys' ``ON DELETE``
actions (migrations 0002 and 0003), on PostgreSQL and SQLite alike.

Kept here, not in a migration, so that every migration makes and drops them the same
way; what a migration passes (the parent table and the statements run for ``OLD``) is
its own and never changes once released.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op


def create_delete_trigger(parent: str, statements: Sequence[str], postgresql: bool) -> None:
    """``trg_<parent>_deleted``: after a row of ``parent`` is deleted, run ``statements``
    (SQL that may refer to the deleted row as ``OLD``), in the deleting transaction. On
    PostgreSQL through the function ``<parent>_deleted()``."""
    body = "".join(f"{statement}; " for statement in statements)
    if postgresql:
        op.execute(
            f"CREATE FUNCTION {parent}_deleted() RETURNS trigger LANGUAGE plpgsql"
            f" AS $$ BEGIN {body}RETURN OLD; END $$"
        )
        op.execute(
            f"CREATE TRIGGER trg_{parent}_deleted AFTER DELETE ON {parent}"
            f" FOR EACH ROW EXECUTE FUNCTION {parent}_deleted()"
        )
    else:
        op.execute(
            f"CREATE TRIGGER trg_{parent}_deleted AFTER DELETE ON {parent}"
            f" FOR EACH ROW BEGIN {body}END"
        )


def drop_delete_trigger(parent: str, postgresql: bool) -> None:
    """Drop what :func:`create_delete_trigger` made for ``parent``."""
    op.execute(f"DROP TRIGGER trg_{parent}_deleted{f' ON {parent}' if postgresql else ''}")
    if postgresql:
        op.execute(f"DROP FUNCTION {parent}_deleted()")
