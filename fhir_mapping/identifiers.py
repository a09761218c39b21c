"""Identifier classification and normalization.

Each Identifier (https://hl7.org/fhir/R4/datatypes.html#Identifier) gets a ``kind``
(mrn | ssn | drivers-license | member-id | passport | national-id | other) from, in
order: the source's own MRN system, the system URI, the v2-0203 type code
(https://terminology.hl7.org/CodeSystem-v2-0203.html), then the type's text (the
Epic and Oracle Health sandboxes label identifiers by text such as "MRN" or "EPI").
The table is ``data/identifier_systems.json``; the US SSN rules come from
https://www.ssa.gov/employer/randomization.html.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from fhir_mapping import _data
from fhir_mapping.model import Identifier, Period
from fhir_mapping.search import fold_text

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
KIND_OTHER = "other"
SSN_LENGTH = 9
#: SSN areas never issued: 000, 666 and 900-999 (https://www.ssa.gov/employer/randomization.html).
_SSN_INVALID_AREAS = frozenset({"000", "666"})
_SSN_FIRST_INVALID_DIGIT = "9"
#: SSNs published in advertising and never valid for a person.
_SSN_KNOWN_INVALID = frozenset({"078051120", "219099999", "123456789"})
_NOT_ALNUM = re.compile(r"[^0-9A-Za-z]")
_NOT_DIGIT = re.compile(r"\D")
IDENTIFIER_CACHE_SIZE = 1 << 12


def ssn_is_valid(digits: str) -> bool:
    """True for a 9-digit SSN the SSA could have issued: area not 000, 666 or 9xx,
    group not 00, serial not 0000."""
    if len(digits) != SSN_LENGTH or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return not (
        area in _SSN_INVALID_AREAS
        or area.startswith(_SSN_FIRST_INVALID_DIGIT)
        or group == "00"
        or serial == "0000"
        or digits in _SSN_KNOWN_INVALID
    )


@lru_cache(maxsize=IDENTIFIER_CACHE_SIZE)
def _kind_from_system(system: str) -> str | None:
    table = _data.identifier_systems()
    kind = table["systems"].get(system)
    if kind is not None:
        return kind
    for prefix, prefix_kind in table["system_prefixes"].items():
        if system.startswith(prefix):
            return prefix_kind
    return None


def v2_type(type_code: str) -> dict[str, Any]:
    """An identifier type that is the v2-0203 code ``type_code`` and nothing more."""
    return {"coding": [{"system": V2_0203, "code": type_code}]}


def _type_code(raw_type: dict[str, Any] | None) -> str | None:
    if not raw_type:
        return None
    codings = raw_type.get("coding") or ()
    for coding in codings:
        if coding.get("system") == V2_0203 and coding.get("code"):
            return str(coding["code"])
    for coding in codings:
        if coding.get("code"):
            return str(coding["code"])
    return None


@lru_cache(maxsize=IDENTIFIER_CACHE_SIZE)
def classify_identifier(
    system: str | None,
    type_code: str | None,
    type_text: str | None,
    mrn_system: str | None = None,
) -> str:
    """The kind of an identifier. With ``mrn_system`` set, only that system is this
    source's MRN; without it, an MR-typed identifier is."""
    if system is not None and mrn_system is not None and system == mrn_system:
        return "mrn"
    table = _data.identifier_systems()
    kind = _kind_from_system(system) if system else None
    if kind is None and type_code:
        kind = table["type_codes"].get(type_code)
    if kind is None and type_text:
        kind = table["type_texts"].get(fold_text(type_text))
    if kind == "mrn" and mrn_system is not None:
        return KIND_OTHER
    return kind or KIND_OTHER


def normalize_identifier_value(value: str, kind: str) -> str:
    """Value for matching: digits only for SSNs, else upper-case without spaces or
    punctuation ("ab-12 34" -> "AB1234")."""
    if kind == "ssn":
        return value if value.isascii() and value.isdigit() else _NOT_DIGIT.sub("", value)
    if value.isascii() and value.isalnum():
        return value.upper()
    return _NOT_ALNUM.sub("", value).upper()


def normalize_identifier(raw: dict[str, Any], mrn_system: str | None = None) -> Identifier:
    """A validated Identifier (FHIR JSON) as an :class:`Identifier`."""
    system = raw.get("system")
    value = raw.get("value")
    raw_type = raw.get("type")
    type_code = _type_code(raw_type)
    kind = classify_identifier(
        system, type_code, raw_type.get("text") if raw_type else None, mrn_system
    )
    normalized = normalize_identifier_value(value, kind) if value else ""
    valid = bool(normalized) and (kind != "ssn" or ssn_is_valid(normalized))
    period = raw.get("period")
    return Identifier(
        system,
        value,
        normalized,
        kind,
        raw.get("use"),
        type_code,
        valid,
        Period(period.get("start"), period.get("end")) if period else None,
        # Kept as the source gave it unless it is just the v2-0203 code (the common
        # case, rebuilt from type_code): a local code system must not be served as v2.
        raw_type if raw_type and (type_code is None or raw_type != v2_type(type_code)) else None,
    )
