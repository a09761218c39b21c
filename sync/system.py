"""Plain functions behind the system tasks (tests call them directly)."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import text

from sync.context import TaskContext


def ping(context: TaskContext, token: str) -> dict[str, Any]:
    """Prove the worker is alive and reaches the database: echo ``token`` with the worker's pid."""
    with context.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"token": token, "pid": os.getpid(), "database": context.engine.dialect.name}
