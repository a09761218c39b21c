"""Celery tasks. Each is a thin wrapper: one call to a plain function."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from sync import system
from sync.context import current_task_context


@shared_task(name="askonce.system.ping", acks_late=True)
def ping(token: str) -> dict[str, Any]:
    return system.ping(current_task_context(), token)
