"""fhir_mapping: validate, normalize and render FHIR R4 Patient and Encounter.

Pure functions, no I/O. Raw FHIR JSON is validated with ``fhir.resources.R4B`` and
becomes a canonical record (:class:`SourcePatient`, :class:`SourceEncounter`) carrying
the normalized match features; a golden record is rendered back to R4 Patient JSON.
FHIR JSON only: XML is out of scope.

Errors (see :mod:`fhir_mapping.errors`)::

    MappingError
    └── InvalidResource      .resource_type, .resource_id, .issues[Issue(path, reason)]
"""

from __future__ import annotations

from fhir_mapping.contact import (
    DEFAULT_REGION,
    normalize_address,
    normalize_contact_point,
    normalize_email,
    normalize_line,
    normalize_phone,
    normalize_postal_code,
)
from fhir_mapping.encounter import parse_encounter, parse_encounter_core, subject_patient_id
from fhir_mapping.errors import InvalidResource, Issue, MappingError
from fhir_mapping.identifiers import classify_identifier, normalize_identifier, ssn_is_valid
from fhir_mapping.model import (
    Address,
    Coding,
    ContactPoint,
    EncounterCore,
    GoldenLink,
    GoldenRecord,
    Identifier,
    Period,
    PersonName,
    SourceEncounter,
    SourcePatient,
)
from fhir_mapping.names import (
    family_alternates,
    family_tokens,
    nickname_key,
    nickname_keys,
    nickname_pairs,
    normalize_name,
    normalize_suffix,
    phonetic_key,
)
from fhir_mapping.patient import MAPPING_VERSION, parse_patient
from fhir_mapping.render import (
    PROVENANCE_EXTENSION,
    golden_record_from_patient,
    render_golden_patient,
)
from fhir_mapping.search import fold_name, fold_text, normalize_search_value, search_tokens
from fhir_mapping.validate import (
    bundle_resources,
    check_resource,
    fhir_path,
    ndjson_resources,
    validate_resource,
)

__all__ = [
    "DEFAULT_REGION",
    "MAPPING_VERSION",
    "PROVENANCE_EXTENSION",
    "Address",
    "Coding",
    "ContactPoint",
    "EncounterCore",
    "GoldenLink",
    "GoldenRecord",
    "Identifier",
    "InvalidResource",
    "Issue",
    "MappingError",
    "Period",
    "PersonName",
    "SourceEncounter",
    "SourcePatient",
    "bundle_resources",
    "check_resource",
    "classify_identifier",
    "family_alternates",
    "family_tokens",
    "fhir_path",
    "fold_name",
    "fold_text",
    "golden_record_from_patient",
    "ndjson_resources",
    "nickname_key",
    "nickname_keys",
    "nickname_pairs",
    "normalize_address",
    "normalize_contact_point",
    "normalize_email",
    "normalize_identifier",
    "normalize_line",
    "normalize_name",
    "normalize_phone",
    "normalize_postal_code",
    "normalize_search_value",
    "normalize_suffix",
    "parse_encounter",
    "parse_encounter_core",
    "parse_patient",
    "phonetic_key",
    "render_golden_patient",
    "search_tokens",
    "ssn_is_valid",
    "subject_patient_id",
    "validate_resource",
]
