"""The FHIR R4 API routers (``/fhir``): metadata, Patient, Encounter."""

from __future__ import annotations

from gateway.fhir import encounter, metadata, patient

__all__ = ["encounter", "metadata", "patient"]
