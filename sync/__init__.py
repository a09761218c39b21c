"""Sync: the Celery app and tasks that move data from sources into the golden record."""

from __future__ import annotations

from sync.celery_app import DEFAULT_QUEUE, create_celery
from sync.context import TaskContext, bind_task_context, current_task_context

__all__ = [
    "DEFAULT_QUEUE",
    "TaskContext",
    "bind_task_context",
    "create_celery",
    "current_task_context",
]
