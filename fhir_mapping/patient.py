"""``parse_patient``: a FHIR R4 Patient (https://hl7.org/fhir/R4/patient.html) as a
:class:`~fhir_mapping.model.SourcePatient`.

The resource is validated first; the canonical record is then read from the raw JSON
(the validated model is not re-serialized, which would cost more than the mapping).
US Core extensions (https://hl7.org/fhir/us/core/STU6.1/StructureDefinition-us-core-patient.html)
are lifted into their fields; every other extension is kept as JSON.
"""

from __future__ import annotations

from typing import Any

from fhir_mapping.contact import DEFAULT_REGION, normalize_address, normalize_contact_point
from fhir_mapping.identifiers import normalize_identifier
from fhir_mapping.model import SourcePatient
from fhir_mapping.names import normalize_name
from fhir_mapping.validate import check_resource

#: The version of what :func:`parse_patient` makes of a Patient. Raise it with every change
#: that reads the same resource differently (a new element kept, another normalization):
#: records stored by an older version are then read again (:mod:`sync.reparse`), since a
#: sync skips a resource whose content did not change. 1: marital status, multiple birth,
#: contacts and identifier types are kept (every earlier version counts as 0).
MAPPING_VERSION = 1

US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
US_CORE_BIRTH_SEX = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"
#: JSON keys of the extensions on Patient's own primitive elements
#: (https://hl7.org/fhir/R4/json.html#primitive); validation rejects any other "_" key.
_PRIMITIVE_EXTENSION_KEYS = tuple(
    "_" + name
    for name in (
        "id",
        "implicitRules",
        "language",
        "active",
        "gender",
        "birthDate",
        "deceasedBoolean",
        "deceasedDateTime",
        "multipleBirthBoolean",
        "multipleBirthInteger",
    )
)
#: The same keys as a set, to find in one C-level intersection whether a Patient has any.
_PRIMITIVE_EXTENSION_KEY_SET = frozenset(_PRIMITIVE_EXTENSION_KEYS)
#: Length of each part of an ISO date: "YYYY", "YYYY-MM", "YYYY-MM-DD".
_YEAR_END, _MONTH_END, _DAY_END = 4, 7, 10
_NO_BIRTH_PARTS: tuple[None, None, None] = (None, None, None)
#: Parts of the birth dates seen (a few per day of a century: they repeat across a
#: load), cleared as a whole when full. Small: a miss costs three int() calls, and at
#: 1 << 15 it held ~10k dates after 25k Patients and ~21k after 100k, the process
#: growing with the load.
_BIRTH_PARTS: dict[str, tuple[int | None, int | None, int | None]] = {}
MAX_CACHED_BIRTH_DATES = 1 << 12


def _birth_parts(birth_date: str | None) -> tuple[int | None, int | None, int | None]:
    if not birth_date:
        return _NO_BIRTH_PARTS
    found = _BIRTH_PARTS.get(birth_date)
    if found is not None:
        return found
    year = int(birth_date[:_YEAR_END])
    month = int(birth_date[_YEAR_END + 1 : _MONTH_END]) if len(birth_date) >= _MONTH_END else None
    day = int(birth_date[_MONTH_END + 1 : _DAY_END]) if len(birth_date) >= _DAY_END else None
    if len(_BIRTH_PARTS) >= MAX_CACHED_BIRTH_DATES:
        _BIRTH_PARTS.clear()
    found = _BIRTH_PARTS[birth_date] = (year, month, day)
    return found


def _language(raw: dict[str, Any]) -> dict[str, Any]:
    language = raw.get("language") or {}
    coding: dict[str, Any] = next((c for c in language.get("coding") or () if c.get("code")), {})
    return {
        "system": coding.get("system"),
        "code": coding.get("code"),
        "display": coding.get("display") or language.get("text"),
        "preferred": raw.get("preferred"),
    }


def parse_patient(
    raw: Any, *, default_region: str = DEFAULT_REGION, mrn_system: str | None = None
) -> SourcePatient:
    """Validate a Patient and build its canonical record with the match features.

    ``default_region`` is the ISO 3166 region for phone numbers written without a
    country code; ``mrn_system`` is the identifier system of this source's MRN.
    Raises :class:`~fhir_mapping.errors.InvalidResource` for invalid input."""
    check_resource(raw, "Patient")
    meta = raw.get("meta") or {}
    race = ethnicity = None
    birth_sex = None
    others: list[dict[str, Any]] = []
    for extension in raw.get("extension") or ():
        url = extension.get("url")
        if url == US_CORE_RACE:
            race = extension
        elif url == US_CORE_ETHNICITY:
            ethnicity = extension
        elif url == US_CORE_BIRTH_SEX and "valueCode" in extension:
            birth_sex = extension["valueCode"]
        else:
            others.append(extension)
    birth_date = raw.get("birthDate")
    year, month, day = _birth_parts(birth_date)
    deceased_datetime = raw.get("deceasedDateTime")
    deceased = raw.get("deceasedBoolean")
    if deceased_datetime is not None:
        deceased = True
    region = default_region or DEFAULT_REGION
    get = raw.get
    # Positional, in the dataclass's field order (keywords cost ~1 us more a Patient;
    # tests/fhir_mapping/test_hc_parse.py holds the result to the keyword construction).
    return SourcePatient(
        get("id") or "",
        meta.get("versionId"),
        meta.get("lastUpdated"),
        get("active"),
        [normalize_name(n) for n in get("name") or ()],
        birth_date,
        year,
        month,
        day,
        get("gender"),
        deceased,
        deceased_datetime,
        [normalize_identifier(i, mrn_system) for i in get("identifier") or ()],
        [normalize_contact_point(t, region) for t in get("telecom") or ()],
        [normalize_address(a) for a in get("address") or ()],
        race,
        ethnicity,
        birth_sex,
        [_language(c) for c in get("communication") or ()],
        list(get("contact") or ()),
        list(get("generalPractitioner") or ()),
        get("managingOrganization"),
        others,
        get("multipleBirthBoolean", get("multipleBirthInteger")),
        list(get("modifierExtension") or ()),
        (
            {k: raw[k] for k in _PRIMITIVE_EXTENSION_KEYS if k in raw}
            if not _PRIMITIVE_EXTENSION_KEY_SET.isdisjoint(raw)
            else {}
        ),
        list(get("link") or ()),
        get("maritalStatus"),
    )
