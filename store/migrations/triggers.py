"""``AFTER DELETE`` row triggers that stand in for dropped foreign keys' ``ON DELETE``
actions (migrations 0002, 0003 and 0004), on PostgreSQL and SQLite alike: a cascade is a
statement on ``OLD``, a key without an action (the delete is refused while rows refer to
the parent) is :func:`refuse_if_referenced`.

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


#: What a refused delete raises: the error the dropped key raised on each backend
#: (PostgreSQL's SQLSTATE 23503, SQLite's message), so callers see an integrity error.
_PG_REFUSAL = "RAISE EXCEPTION 'a row still refers to the deleted row' USING ERRCODE = '23503'"
_SQLITE_REFUSAL = "RAISE(ABORT, 'FOREIGN KEY constraint failed')"


def refuse_if_referenced(references: Sequence[tuple[str, str]], postgresql: bool) -> str:
    """A trigger statement (for :func:`create_delete_trigger`) that fails the delete of
    ``OLD`` while a row of one of ``references`` (table, column) holds ``OLD.id``: what a
    foreign key without an ``ON DELETE`` action did. The columns should be indexed, or
    each delete scans the table (as the key's own check did)."""
    exists = " OR ".join(
        f"EXISTS (SELECT 1 FROM {table} WHERE {column} = OLD.id)" for table, column in references
    )
    if postgresql:
        return f"IF {exists} THEN {_PG_REFUSAL}; END IF"
    return f"SELECT {_SQLITE_REFUSAL} WHERE {exists}"
