"""Sync: moving data from sources into the golden record, reliably.

:func:`ingest_page` takes one page of a source into source records (validated,
deduplicated by content hash, invalid ones quarantined), resolves Patients
through :mod:`mpi`, attaches Encounters, applies deletions and writes the cursor,
all in the caller's transaction. :func:`run_source` drives a whole run, chunk by
chunk, resumable after a crash; :mod:`sync.tasks` wraps it for Celery and beat;
:mod:`sync.intake` feeds pushed FHIR Subscription notifications to the same pipeline
(a gap in them is owed a catch-up sync until one succeeds: :mod:`sync.catchup`);
:func:`reprocess_quarantined` runs a source's quarantined records through it again;
:func:`update_source` changes a registered source (and :func:`refresh_goldens` renders
its golden records again when survivorship's inputs changed); :func:`remove_source`
takes a source's records out of the golden records and erases it.

Errors::

    Exception
     └── SyncError                  base of this package's errors
          ├── SourceUnavailableError   the source does not exist or is disabled
          ├── DatabaseUnavailableError a database failure worth retrying (lost
          │                            connection, deadlock, lock timeout)
          └── NotificationError        a push notification that cannot be read
    ValueError
     ├── InvalidScheduleError       a source schedule that is neither interval nor cron
     ├── SourceSettingsError        a source setting that cannot be stored
     │   └── SourceRemovingError    the source is being removed: nothing changes it
     └── ReprocessError             reprocessing asked for a type that is not synced

Connector errors (:class:`connectors.TransientError`, :class:`connectors.PermanentError`)
pass through: a transient one retries the chunk, a permanent one fails the run. A
database failure worth retrying (:func:`store.errors.transient_database_error`) becomes
a :class:`DatabaseUnavailableError`, which retries the chunk too.
"""

from __future__ import annotations

from sync.celery_app import DEFAULT_QUEUE, beat_schedule, create_celery
from sync.context import TaskContext, bind_task_context, current_task_context
from sync.patients import PatientOptions
from sync.pipeline import IngestResult, apply_deletions, ingest_page
from sync.records import content_hash
from sync.reprocess import ReprocessError, ReprocessResult, reprocess_quarantined
from sync.retire import RemovalResult, begin_removal, removal_plan, remove_source
from sync.runner import (
    ChunkResult,
    DatabaseUnavailableError,
    SourceUnavailableError,
    SyncError,
    run_chunk,
    run_source,
    source_config,
    start_or_resume,
    wait_for_statistics,
)
from sync.scheduling import InvalidScheduleError, due_sources, parse_schedule
from sync.sources import (
    SourceChange,
    SourceRemovingError,
    SourceSettingsError,
    SourceUpdate,
    check_source,
    checked_settings,
    refresh_goldens,
    update_source,
)

__all__ = [
    "DEFAULT_QUEUE",
    "ChunkResult",
    "DatabaseUnavailableError",
    "IngestResult",
    "InvalidScheduleError",
    "PatientOptions",
    "RemovalResult",
    "ReprocessError",
    "ReprocessResult",
    "SourceChange",
    "SourceRemovingError",
    "SourceSettingsError",
    "SourceUnavailableError",
    "SourceUpdate",
    "SyncError",
    "TaskContext",
    "apply_deletions",
    "beat_schedule",
    "begin_removal",
    "bind_task_context",
    "check_source",
    "checked_settings",
    "content_hash",
    "create_celery",
    "current_task_context",
    "due_sources",
    "ingest_page",
    "parse_schedule",
    "refresh_goldens",
    "removal_plan",
    "remove_source",
    "reprocess_quarantined",
    "run_chunk",
    "run_source",
    "source_config",
    "start_or_resume",
    "update_source",
    "wait_for_statistics",
]
