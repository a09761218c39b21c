"""Celery tasks. Each is a thin wrapper: one call to a plain function.

Tasks take ids, never ORM objects, and find the database through
:func:`sync.context.current_task_context`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, current_app, shared_task

from connectors import TransientError
from sync import delivery, reparse, retention, retire, runner, scheduling, system
from sync.celery_app import SCHEDULER_TICK_S
from sync.context import current_task_context
from sync.pipeline import UnknownSourceError
from sync.runner import DatabaseUnavailableError, database_retries

log = logging.getLogger(__name__)

#: Retries of a chunk that hit a TransientError (the source's) or a DatabaseUnavailableError
#: (a lost connection, a deadlock, a lock timeout): exponential backoff with jitter, capped.
RUN_SOURCE_MAX_RETRIES = 8
RUN_SOURCE_BACKOFF_MAX_S = 600
#: The retries of a task whose work only the database can fail, and that an attempt
#: finishes where the last one stopped: exponential backoff with jitter, capped.
DATABASE_RETRIES: dict[str, Any] = {
    "autoretry_for": (DatabaseUnavailableError,),
    "retry_backoff": True,
    "retry_backoff_max": RUN_SOURCE_BACKOFF_MAX_S,
    "retry_jitter": True,
    "max_retries": RUN_SOURCE_MAX_RETRIES,
}


def send_after_answer(task: Task, **kwargs: Any) -> bool:
    """Send ``task`` from an API request's background work, after the answer: to a worker
    in services mode; embedded, it runs here and now, where Celery raises its failure
    (a retry included: an eager task is not retried). Nobody waits for that failure, so
    it is logged by type, not raised into the server, and the task's purpose stays
    recorded for a later try (an owed catch-up for the scheduler, a source marked as
    being removed for the next removal). Returns whether it went through."""
    try:
        task.apply_async(kwargs=kwargs)
    except Exception as exc:
        log.warning(
            "background task failed; it is tried again later",
            extra={"task": task.name, "source_id": kwargs.get("source_id"), "error": _cause(exc)},
        )
        return False
    return True


def _cause(exc: BaseException) -> str:
    """The failure's own type: an eager retry's ``Retry`` names the error it carries."""
    inner = getattr(exc, "exc", None)
    return type(inner if isinstance(inner, BaseException) else exc).__name__


@shared_task(name="askonce.system.ping", acks_late=True)
def ping(token: str) -> dict[str, Any]:
    return system.ping(current_task_context(), token)


def _requeue(source_id: int, run_id: int, token: str) -> None:
    run_source.apply_async(kwargs={"source_id": source_id, "run_id": run_id, "token": token})


# acks_late is safe: a chunk re-run reads the committed cursor again and the
# content hash turns the repeated page into a no-op.
@shared_task(
    name="askonce.sync.run_source",
    acks_late=True,
    **{**DATABASE_RETRIES, "autoretry_for": (TransientError, DatabaseUnavailableError)},
)
def run_source(
    source_id: int, run_id: int | None = None, token: str | None = None, full: bool = False
) -> dict[str, Any]:
    """Start, resume or continue a run of one source: one page, then requeue."""
    return runner.run_source(
        current_task_context(),
        source_id,
        run_id=run_id,
        token=token,
        full=full,
        requeue=None if current_app.conf.task_always_eager else _requeue,
    ).as_dict()


@shared_task(name="askonce.sync.schedule_due", acks_late=True)
def schedule_due() -> list[int]:
    """Beat's tick: start (or resume) every source whose schedule is due."""
    return scheduling.dispatch_due(current_task_context(), _trigger, _remove, _reread)


def _trigger(source_id: int) -> None:
    run_source.apply_async(kwargs={"source_id": source_id})


def _remove(source_id: int) -> None:
    remove_source.apply_async(kwargs={"source_id": source_id})


def _reread(source_id: int) -> None:
    # Not worth doing after the next tick, which sends it again if it is still owed.
    reparse_source.apply_async(kwargs={"source_id": source_id}, expires=SCHEDULER_TICK_S)


# acks_late is safe: a pass keeps its place in the source row, committed with each batch,
# so a redelivered task goes on from there.
@shared_task(name="askonce.sync.reparse_source", acks_late=True, **DATABASE_RETRIES)
def reparse_source(source_id: int) -> dict[str, Any]:
    """Read a slice of the source's stored Patients again (see :mod:`sync.reparse`)."""
    context = current_task_context()
    with database_retries():
        return reparse.reparse_source(
            context.session_factory,
            source_id,
            default_region=context.default_region,
            max_seconds=reparse.REPARSE_SLICE_S,
        ).as_dict()


# acks_late is safe: a removal skips what an earlier attempt did, so a redelivered task
# (its worker died) or a retried one (the database failed) finishes the removal.
@shared_task(name="askonce.sync.remove_source", acks_late=True, **DATABASE_RETRIES)
def remove_source(source_id: int) -> dict[str, Any]:
    """Take a source's records out of the golden records, then erase the source."""
    try:
        with database_retries():
            return retire.remove_source(current_task_context().session_factory, source_id).as_dict()
    except UnknownSourceError:  # an earlier delivery finished it
        return retire.RemovalResult(source_id, removed=True).as_dict()


# No acks_late: a tick lost with its worker is replaced by the next one, and a send that
# died mid-way is sent again once its lease expires (delivery is at least once either way).
@shared_task(name="askonce.sync.deliver")
def deliver() -> dict[str, Any]:
    """Beat's delivery tick: hand out the outbox's new events and send what is due."""
    return delivery.deliver_with(current_task_context()).as_dict()


# acks_late is safe: a redelivered export (its worker died) finds the dead worker's lease
# and leaves the job; once the lease runs out, the client's next status poll hands it out
# again, and it resumes from the last file it committed.
@shared_task(name="askonce.export.run", acks_late=True)
def run_export(job_id: str) -> dict[str, Any]:
    """Write a Bulk Data export's files (see gateway.operations.export)."""
    runner_ = current_task_context().run_export
    if runner_ is None:
        raise RuntimeError("this process was not wired to run exports")
    return runner_(job_id)


# No acks_late: a prune lost with its worker is done by the next tick (it is idempotent).
@shared_task(name="askonce.sync.prune")
def prune() -> dict[str, Any]:
    """Beat's hourly tick: delete the change events, queue rows and sync runs past their
    retention (see :mod:`sync.retention`)."""
    return retention.prune_with(current_task_context()).as_dict()
