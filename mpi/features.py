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
    return _name_from(
        name.given_folded,
        name.family_folded,
        name.given_canonical,
        name.family_alternates,
        name.family_tokens,
        name.suffix_normalized,
    )


def _name_from(
    given_list: list[str],
    family_folded: str | None,
    canonical: list[str],
    alternates: list[str],
    family_tokens: list[str],
    suffix: str | None,
) -> NameFeatures | None:
    given_folded = [g for g in given_list if g]
    family = family_folded or ""
    if not given_folded and not family:
        return None
    given = " ".join(given_folded)
    first = given_folded[0] if given_folded else ""
    keys = set(nickname_keys(first)) if first else set()
    keys.update(c for c in canonical[:1] if c)
    variants = {family, *alternates} - {""}
    tokens = set(family_tokens) or set(family.split())
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
        suffix=suffix,
    )


def extract_features(patient: SourcePatient) -> MatchFeatures:
    """The match features of a mapped source Patient."""
    names = tuple(f for f in (_name_features(n) for n in patient.names) if f is not None)
    return _features(
        names,
        patient.birth_year,
        patient.birth_month,
        patient.birth_day,
        patient.gender,
        [(i.value_normalized, i.valid, i.system, i.kind) for i in patient.identifiers],
        [(t.system, t.value_normalized) for t in patient.telecom],
        [(a.line_normalized, a.postal_normalized, a.city_folded) for a in patient.addresses],
    )


def features_from_normalized(data: dict[str, Any]) -> MatchFeatures:
    """``extract_features(SourcePatient.from_dict(data))`` read straight from the stored
    ``source_record.normalized`` JSON, without building the record's dataclasses (a
    candidate is only compared; its record is parsed only when its golden record is
    rendered). A missing key takes the dataclass default, as ``from_dict`` does."""
    names = tuple(
        f
        for f in (
            _name_from(
                n.get("given_folded", []),
                n.get("family_folded", ""),
                n.get("given_canonical", []),
                n.get("family_alternates", []),
                n.get("family_tokens", []),
                n.get("suffix_normalized"),
            )
            for n in data.get("names", [])
        )
        if f is not None
    )
    return _features(
        names,
        data.get("birth_year"),
        data.get("birth_month"),
        data.get("birth_day"),
        data.get("gender"),
        [
            (
                i.get("value_normalized", ""),
                i.get("valid", True),
                i.get("system"),
                i.get("kind", "other"),
            )
            for i in data.get("identifiers", [])
        ],
        [(t.get("system"), t.get("value_normalized", "")) for t in data.get("telecom", [])],
        [
            (a.get("line_normalized", ""), a.get("postal_normalized", ""), a.get("city_folded", ""))
            for a in data.get("addresses", [])
        ],
    )


def _features(
    names: tuple[NameFeatures, ...],
    birth_year: int | None,
    birth_month: int | None,
    birth_day: int | None,
    gender: str | None,
    identifiers: list[tuple[str, bool, str | None, str]],
    telecom: list[tuple[str | None, str]],
    addresses: list[tuple[str, str, str]],
) -> MatchFeatures:
    complete = birth_year is not None and birth_month is not None and birth_day is not None
    birth = f"{birth_year:04d}{birth_month:02d}{birth_day:02d}" if complete else None
    ssns: set[str] = set()
    strong: set[tuple[str, str]] = set()
    other: set[tuple[str, str]] = set()
    mrns: set[tuple[str, str]] = set()
    for value, valid, system_or_none, kind in identifiers:
        if not value or not valid:
            continue
        system = system_or_none or ""
        if kind == "ssn":
            ssns.add(value)
        elif kind in STRONG_IDENTIFIER_KINDS:
            strong.add((system, value))
        elif kind == "mrn":
            mrns.add((system, value))
        else:
            other.add((system, value))
    phones = {value for system, value in telecom if system == "phone"}
    emails = {value for system, value in telecom if system == "email"}
    return MatchFeatures(
        names=names,
        birth_date=birth,
        birth_year=birth_year,
        birth_month=birth_month,
        birth_day=birth_day,
        gender=gender if gender in ("male", "female") else None,
        phones=frozenset(phones - {""}),
        emails=frozenset(emails - {""}),
        ssns=frozenset(ssns),
        strong_ids=frozenset(strong),
        other_ids=frozenset(other),
        mrns=frozenset(mrns),
        addresses=tuple(a for a in addresses if a[0] or a[1] or a[2]),
    )
