"""Alembic, driven from code: upgrade, downgrade and the at-head check every process runs."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
UPGRADE_COMMAND = "askonce db upgrade"


class SchemaNotAtHeadError(RuntimeError):
    """The database schema is missing or older (or newer) than this code expects."""


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None, "no migrations found"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema_at_head(engine: Engine) -> None:
    """Raise :class:`SchemaNotAtHeadError` naming the command to run, unless at head."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        state = "empty" if current is None else f"at revision {current}"
        raise SchemaNotAtHeadError(
            f"The database schema is {state}; this askonce expects {head}. "
            f"Run `{UPGRADE_COMMAND}` first."
        )
