"""Resources as a ``full-resource`` notification carries them: the same rendering a
consumer's read gets (:mod:`sync.delivery` is handed :func:`render_focus` by the
composition root; it may not import the gateway)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from gateway.operations.encounters import read_encounter
from gateway.operations.read import read_patient
from gateway.outcomes import OutcomeError


def render_focus(session: Session, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    """The Patient or Encounter as ``GET /fhir/<type>/<id>`` returns it; None when it is
    gone (deleted, or not a type consumers read)."""
    try:
        if resource_type == "Patient":
            return read_patient(session, resource_id).as_dict()
        if resource_type == "Encounter":
            return read_encounter(session, resource_id)
    except OutcomeError:
        return None
    return None
