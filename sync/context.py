"""What a task needs at run time, bound once per process by the composition root.

Tasks take ids, never ORM objects; they find the database through this context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mpi import MatchSettings

DEFAULT_REGION = "US"
#: Days change events (and the subscriptions' queues of them) are kept once delivered.
DEFAULT_OUTBOX_RETENTION_DAYS = 30
#: Days finished sync runs are kept (each source's latest run is kept whatever its age).
DEFAULT_RUN_RETENTION_DAYS = 90
#: A running run with no committed page for this long is considered crashed and resumed.
DEFAULT_STALL_AFTER_S = 300.0
#: How often the watch reads each Subscription askonce created on an EHR.
DEFAULT_SUBSCRIPTION_CHECK_S = 300.0


@dataclass(frozen=True)
class TaskContext:
    engine: Engine
    session_factory: sessionmaker[Session]
    #: Region for phone numbers written without a country code (a source may override it).
    default_region: str = DEFAULT_REGION
    #: Match thresholds from settings; None means the engine's defaults.
    match_settings: MatchSettings | None = None
    #: ``render(session, type, id)``: a resource as consumers read it, for ``full-resource``
    #: notifications (the gateway's rendering, wired by the composition root).
    render_focus: Callable[[Session, str, str], dict[str, Any] | None] | None = None
    #: The FHIR base notifications refer to (``<public URL>/fhir``); "" for relative ones.
    fhir_base: str = ""
    #: Retention of delivered change events, in days (0: for ever); see sync.retention.
    outbox_retention_days: int = DEFAULT_OUTBOX_RETENTION_DAYS
    #: Retention of finished sync runs, in days (0: for ever).
    run_retention_days: int = DEFAULT_RUN_RETENTION_DAYS
    #: A running run with no committed page for this long counts as crashed (s); also the
    #: wait before a failed catch-up is tried again (sync.scheduling, sync.catchup).
    stall_after_s: float = DEFAULT_STALL_AFTER_S
    #: How often the Subscriptions askonce created on the EHRs are read (s; sooner when a
    #: heartbeat is overdue): sync.ehr_watch.watch.
    subscription_check_s: float = DEFAULT_SUBSCRIPTION_CHECK_S
    #: ``run(job_id)``: writes a Bulk Data export's files (the gateway's
    #: ``gateway.operations.export.run_export``, wired by the composition root).
    run_export: Callable[[str], dict[str, Any]] | None = None


class TaskContextMissingError(RuntimeError):
    """A task ran in a process that never bound a :class:`TaskContext`."""


_current: TaskContext | None = None


def bind_task_context(context: TaskContext) -> None:
    global _current
    _current = context


def bound_task_context() -> TaskContext | None:
    """The bound context, or None in a process that has not bound one."""
    return _current


def current_task_context() -> TaskContext:
    if _current is None:
        raise TaskContextMissingError(
            "no task context bound; processes start through askonce.runtime.build_runtime()"
        )
    return _current
