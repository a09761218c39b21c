"""FHIR operations as plain functions: request values in, resource or OperationOutcome out.

They know nothing of FastAPI (see ../shared/STYLE.md, medplum); the routers in
:mod:`gateway.fhir` adapt them. Errors are raised as
:class:`gateway.outcomes.OutcomeError`.
"""

from __future__ import annotations

from gateway.operations.capability import capability_statement
from gateway.operations.encounters import read_encounter, render_encounter, search_encounters
from gateway.operations.everything import everything
from gateway.operations.match import match, parse_match_request
from gateway.operations.read import history_patient, read_patient, vread_patient
from gateway.operations.search_patient import SearchContext, search_patients

__all__ = [
    "SearchContext",
    "capability_statement",
    "everything",
    "history_patient",
    "match",
    "parse_match_request",
    "read_encounter",
    "read_patient",
    "render_encounter",
    "search_encounters",
    "search_patients",
    "vread_patient",
]
