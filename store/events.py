"""Encounter outbox events (ids only: a payload never carries PHI).

Written by the sync pipeline (an Encounter received, changed or deleted) and by the MPI
(an Encounter whose patient moved to another golden record: a new ``subject``), so both
build them here. ``patient.*`` events are :func:`mpi.storage.event_row`'s.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from store.jsontext import json_text
from store.types import utcnow

ENCOUNTER_CREATED = "encounter.created"
ENCOUNTER_UPDATED = "encounter.updated"
ENCOUNTER_DELETED = "encounter.deleted"


def outbox_row(
    event_type: str, encounter_id: int, *, now: datetime | None = None, **payload: Any
) -> dict[str, Any]:
    """An outbox row for an Encounter event, for an ORM or Core insert."""
    now = now or utcnow()
    return {
        "event_type": event_type,
        "aggregate_type": "Encounter",
        "aggregate_id": str(encounter_id),
        "payload": {"encounter_id": encounter_id, **payload},
        "created_at": now,
        "next_attempt_at": now,
        "attempts": 0,
    }


def outbox_values(
    event_type: str,
    encounter_id: int,
    now: Any,
    *,
    golden_id: str | None,
    source_id: int,
    resource_id: str,
) -> tuple[Any, ...]:
    """The values of an Encounter event in :data:`store.bulk.OUTBOX_COLUMNS` order, for a
    driver-level insert (``now`` as the writer encodes timestamps)."""
    payload = {
        "encounter_id": encounter_id,
        "golden_id": golden_id,
        "source_id": source_id,
        "resource_id": resource_id,
    }
    return (event_type, "Encounter", str(encounter_id), json_text(payload), now, now, 0)
