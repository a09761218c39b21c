"""Match features: the parts of a :class:`~fhir_mapping.model.SourcePatient` that matching reads.

``fhir_mapping`` has already folded, transliterated and normalized everything
(https://hl7.org/fhir/R4/patient.html); this module only picks the values out and adds the
phonetic codes, so that comparing two records is a handful of set and string operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_mapping import SourcePatient, nickname_keys, phonetic_key

#: Identifier kinds that name one person for life: two different values of the same
#: system mean two different people (a guard vetoes the auto-link).
STRONG_IDENTIFIER_KINDS = frozenset({"ssn", "national-id", "passport", "drivers-license"})
#: Identifier kinds that are compared as evidence (same system only) but never veto.
EVIDENCE_IDENTIFIER_KINDS = frozenset({"member-id", "other"})


@dataclass(frozen=True, slots=True)
class NameFeatures:
    """One name of a record, ready to compare."""

    given: str  # all given names folded, joined by one space
    given_first: str
    given_tokens: frozenset[str]
    given_keys: frozenset[str]  # nickname-equivalence keys of the first given name
    given_phonetic: str
    family: str
    family_variants: frozenset[str]  # folded + alternates (umlaut spellings, run together)
    family_tokens: frozenset[str]
    family_phonetic: str
    suffix: str | None


@dataclass(frozen=True, slots=True)
class MatchFeatures:
    """Everything a comparison or a guard looks at, for one source record."""

    names: tuple[NameFeatures, ...]
    birth_date: str | None  # YYYYMMDD when complete
    birth_year: int | None
    birth_month: int | None
    birth_day: int | None
    gender: str | None
    phones: frozenset[str]
    emails: frozenset[str]
    ssns: frozenset[str]
    #: (system, value) of strong identifiers other than SSN.
    strong_ids: frozenset[tuple[str, str]]
    #: (system, value) of other identifiers (member ids, unknown systems), MRNs excluded.
    other_ids: frozenset[tuple[str, str]]
    mrns: frozenset[tuple[str, str]]
    #: (line, postal code, city) of each address.
    addresses: tuple[tuple[str, str, str], ...]

    @property
    def suffix(self) -> str | None:
        return next((n.suffix for n in self.names if n.suffix), None)


def _name_features(name: Any) -> NameFeatures | None:
    given_folded = [g for g in name.given_folded if g]
    family = name.family_folded or ""
    if not given_folded and not family:
        return None
    given = " ".join(given_folded)
    first = given_folded[0] if given_folded else ""
    keys = set(nickname_keys(first)) if first else set()
    keys.update(c for c in name.given_canonical[:1] if c)
    variants = {family, *name.family_alternates} - {""}
    tokens = set(name.family_tokens) or set(family.split())
    return NameFeatures(
        given=given,
        given_first=first,
        given_tokens=frozenset(given.split()),
        given_keys=frozenset(keys),
        given_phonetic=phonetic_key(first) if first else "",
        family=family,
        family_variants=frozenset(variants),
        family_tokens=frozenset(tokens),
        family_phonetic=phonetic_key(family) if family else "",
        suffix=name.suffix_normalized,
    )


def extract_features(patient: SourcePatient) -> MatchFeatures:
    """The match features of a mapped source Patient."""
    names = tuple(f for f in (_name_features(n) for n in patient.names) if f is not None)
    complete = (
        patient.birth_year is not None
        and patient.birth_month is not None
        and patient.birth_day is not None
    )
    birth = (
        f"{patient.birth_year:04d}{patient.birth_month:02d}{patient.birth_day:02d}"
        if complete
        else None
    )
    ssns: set[str] = set()
    strong: set[tuple[str, str]] = set()
    other: set[tuple[str, str]] = set()
    mrns: set[tuple[str, str]] = set()
    for ident in patient.identifiers:
        value = ident.value_normalized
        if not value or not ident.valid:
            continue
        system = ident.system or ""
        if ident.kind == "ssn":
            ssns.add(value)
        elif ident.kind in STRONG_IDENTIFIER_KINDS:
            strong.add((system, value))
        elif ident.kind == "mrn":
            mrns.add((system, value))
        else:
            other.add((system, value))
    phones = {t.value_normalized for t in patient.telecom if t.system == "phone"}
    emails = {t.value_normalized for t in patient.telecom if t.system == "email"}
    addresses = tuple(
        (a.line_normalized, a.postal_normalized, a.city_folded)
        for a in patient.addresses
        if a.line_normalized or a.postal_normalized or a.city_folded
    )
    return MatchFeatures(
        names=names,
        birth_date=birth,
        birth_year=patient.birth_year,
        birth_month=patient.birth_month,
        birth_day=patient.birth_day,
        gender=patient.gender if patient.gender in ("male", "female") else None,
        phones=frozenset(phones - {""}),
        emails=frozenset(emails - {""}),
        ssns=frozenset(ssns),
        strong_ids=frozenset(strong),
        other_ids=frozenset(other),
        mrns=frozenset(mrns),
        addresses=addresses,
    )
