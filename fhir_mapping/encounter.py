"""``parse_encounter``: a FHIR R4 Encounter (https://hl7.org/fhir/R4/encounter.html) as a
:class:`~fhir_mapping.model.SourceEncounter` (``parse_encounter_core``: the same verdict,
only the fields a sync stores)."""

from __future__ import annotations

from typing import Any

from fhir_mapping.identifiers import normalize_identifier
from fhir_mapping.model import Coding, EncounterCore, Period, SourceEncounter
from fhir_mapping.validate import check_resource

_PATIENT_PREFIX = "Patient/"
_NO_META: dict[str, Any] = {}


def _coding(raw: dict[str, Any] | None) -> Coding | None:
    if not raw:
        return None
    return Coding(raw.get("system"), raw.get("code"), raw.get("display"))


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


def parse_encounter_core(raw: Any) -> EncounterCore:
    """Validate an Encounter (the verdict of :func:`parse_encounter`) and read only what a
    sync stores of it besides the resource: a quarter of :func:`parse_encounter`'s time
    went to codings, identifiers and references nothing there reads.

    Raises :class:`~fhir_mapping.errors.InvalidResource` for invalid input."""
    check_resource(raw, "Encounter")
    get = raw.get
    meta = get("meta") or _NO_META
    period = get("period")
    return EncounterCore(
        get("id") or "",
        meta.get("versionId"),
        meta.get("lastUpdated"),
        subject_patient_id(get("subject")),
        get("status"),
        _coding(get("class")),
        Period(period.get("start"), period.get("end")) if period else None,
    )


def parse_encounter(raw: Any) -> SourceEncounter:
    """Validate an Encounter and build its canonical record.

    Raises :class:`~fhir_mapping.errors.InvalidResource` for invalid input."""
    core = parse_encounter_core(raw)
    get = raw.get
    identifiers = get("identifier")
    types = get("type")
    reasons = get("reasonCode")
    # Positional, in SourceEncounter's field order (tests/fhir_mapping/test_hc_parse.py).
    return SourceEncounter(
        core.resource_id,
        core.version_id,
        core.last_updated,
        core.patient_id,
        core.status,
        core.class_code,
        _concept_codings(types) if types else [],
        core.period,
        _concept_codings(reasons) if reasons else [],
        [normalize_identifier(i) for i in identifiers] if identifiers else [],
        list(get("location") or ()),
        list(get("participant") or ()),
        get("serviceProvider"),
        list(get("extension") or ()),
        list(get("reasonReference") or ()),
    )
