"""``parse_encounter``: a FHIR R4 Encounter (https://hl7.org/fhir/R4/encounter.html) as a
:class:`~fhir_mapping.model.SourceEncounter`."""

from __future__ import annotations

from typing import Any

from fhir_mapping.identifiers import normalize_identifier
from fhir_mapping.model import Coding, Period, SourceEncounter
from fhir_mapping.validate import check_resource

_PATIENT_PREFIX = "Patient/"


def _coding(raw: dict[str, Any] | None) -> Coding | None:
    if not raw:
        return None
    return Coding(system=raw.get("system"), code=raw.get("code"), display=raw.get("display"))


def _concept_codings(concepts: Any) -> list[Coding]:
    """Every coding of a list of CodeableConcepts; a text-only concept becomes a
    Coding with only ``display``."""
    codings: list[Coding] = []
    for concept in concepts or ():
        found = [c for c in (_coding(x) for x in concept.get("coding") or ()) if c]
        if found:
            codings.extend(found)
        elif concept.get("text"):
            codings.append(Coding(display=concept["text"]))
    return codings


def subject_patient_id(reference: dict[str, Any] | None) -> str | None:
    """The Patient id of a ``subject`` Reference: "Patient/123", an absolute
    ".../Patient/123[/_history/2]" URL, or None for other references."""
    if not reference:
        return None
    ref = reference.get("reference")
    if not ref or (reference.get("type") not in (None, "Patient")):
        return None
    marker = ref.rfind(_PATIENT_PREFIX)
    if marker == -1 or (marker > 0 and ref[marker - 1] != "/"):
        return None
    rest = ref[marker + len(_PATIENT_PREFIX) :].split("/", 1)[0]
    return rest or None


def parse_encounter(raw: Any) -> SourceEncounter:
    """Validate an Encounter and build its canonical record.

    Raises :class:`~fhir_mapping.errors.InvalidResource` for invalid input."""
    check_resource(raw, "Encounter")
    meta = raw.get("meta") or {}
    period = raw.get("period")
    return SourceEncounter(
        resource_id=raw.get("id") or "",
        version_id=meta.get("versionId"),
        last_updated=meta.get("lastUpdated"),
        patient_id=subject_patient_id(raw.get("subject")),
        status=raw.get("status"),
        class_code=_coding(raw.get("class")),
        types=_concept_codings(raw.get("type")),
        period=Period(start=period.get("start"), end=period.get("end")) if period else None,
        reasons=_concept_codings(raw.get("reasonCode")),
        identifiers=[normalize_identifier(i) for i in raw.get("identifier") or ()],
        locations=list(raw.get("location") or ()),
        participants=list(raw.get("participant") or ()),
        service_provider=raw.get("serviceProvider"),
        extensions=list(raw.get("extension") or ()),
        reason_references=list(raw.get("reasonReference") or ()),
    )
