"""Canonical records: what every FHIR Patient and Encounter becomes after mapping.

These dataclasses are the contract between ``fhir_mapping`` (which builds them)
and ``mpi``/``sync``/``gateway`` (which read them). They serialize to plain JSON
(``to_dict``/``from_dict``) for the ``source_record.normalized`` column.

Fields ending in ``_folded``/``_normalized`` are the match features: lower-case,
diacritics folded, non-Latin scripts transliterated, punctuation removed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class Period:
    start: str | None = None
    end: str | None = None


@dataclass(slots=True)
class PersonName:
    """One HumanName, as given and normalized for matching."""

    use: str | None = None
    text: str | None = None
    family: str | None = None
    given: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)
    suffix: list[str] = field(default_factory=list)
    period: Period | None = None
    #: Folded family name, tokens joined by one space:
    #: "Müller-Lüdenscheidt" -> "muller ludenscheidt".
    family_folded: str = ""
    #: Other foldings of the family name worth matching on (German "ue" spellings…).
    family_alternates: list[str] = field(default_factory=list)
    #: Family name split into tokens, particles (van, de, al, bin…) removed.
    family_tokens: list[str] = field(default_factory=list)
    #: Each given name folded.
    given_folded: list[str] = field(default_factory=list)
    #: Each given name mapped to its nickname-equivalence key ("bob" -> "robert").
    given_canonical: list[str] = field(default_factory=list)
    #: Normalized suffix (jr, sr, ii, iii…), if any.
    suffix_normalized: str | None = None
    #: True when ``text`` shows family-first order (Vietnamese, Chinese, Hungarian).
    family_first: bool = False
    #: True when given and family look swapped (the given name is a known surname…).
    swapped_suspect: bool = False


@dataclass(slots=True)
class Identifier:
    system: str | None = None
    value: str | None = None
    #: Value normalized for matching (punctuation and spaces removed, upper-case).
    value_normalized: str = ""
    #: mrn | ssn | drivers-license | member-id | passport | national-id | other
    kind: str = "other"
    use: str | None = None
    type_code: str | None = None
    #: False for values known to be invalid (an SSN with area 000, 666 or 9xx…).
    valid: bool = True
    period: Period | None = None


@dataclass(slots=True)
class ContactPoint:
    system: str | None = None  # phone | email | fax | sms | url | other
    value: str | None = None
    #: E.164 for phones ("+14155550123"), lower-case for emails; "" when unparseable.
    value_normalized: str = ""
    use: str | None = None
    rank: int | None = None
    period: Period | None = None


@dataclass(slots=True)
class Address:
    use: str | None = None
    type: str | None = None
    text: str | None = None
    line: list[str] = field(default_factory=list)
    city: str | None = None
    district: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None
    period: Period | None = None
    #: Lines normalized: folded, punctuation removed, "Street" -> "st", "Apartment" -> "apt".
    line_normalized: str = ""
    city_folded: str = ""
    #: Postal code normalized per country (US ZIP5, UK outward+inward, spaces removed…).
    postal_normalized: str = ""


@dataclass(slots=True)
class SourcePatient:
    """A source Patient: everything askonce keeps, plus the normalized match features."""

    resource_id: str
    version_id: str | None = None
    last_updated: str | None = None
    active: bool | None = None
    names: list[PersonName] = field(default_factory=list)
    #: As given: "1970", "1970-03" or "1970-03-14".
    birth_date: str | None = None
    birth_year: int | None = None
    birth_month: int | None = None
    birth_day: int | None = None
    gender: str | None = None
    deceased: bool | None = None
    deceased_datetime: str | None = None
    identifiers: list[Identifier] = field(default_factory=list)
    telecom: list[ContactPoint] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)
    #: US Core extensions, kept as their FHIR JSON.
    race: dict[str, Any] | None = None
    ethnicity: dict[str, Any] | None = None
    birth_sex: str | None = None
    #: (language code, preferred) pairs from ``communication``.
    languages: list[dict[str, Any]] = field(default_factory=list)
    #: ``contact`` (next of kin…), ``generalPractitioner`` and ``managingOrganization``, as JSON.
    contacts: list[dict[str, Any]] = field(default_factory=list)
    general_practitioner: list[dict[str, Any]] = field(default_factory=list)
    managing_organization: dict[str, Any] | None = None
    #: Every extension we do not understand, kept as JSON, never dropped.
    extensions: list[dict[str, Any]] = field(default_factory=list)
    #: ``multipleBirthBoolean`` / ``multipleBirthInteger`` as given (twins guard).
    multiple_birth: bool | int | None = None
    #: ``modifierExtension``, kept as JSON.
    modifier_extensions: list[dict[str, Any]] = field(default_factory=list)
    #: Extensions on top-level primitives, by their JSON key ("_birthDate": {...}),
    #: e.g. the birth time (https://hl7.org/fhir/R4/extension-patient-birthtime.html).
    primitive_extensions: dict[str, Any] = field(default_factory=dict)
    #: The source's own ``Patient.link`` entries (its merges: "replaced-by", "replaces",
    #: "seealso"), as JSON (https://hl7.org/fhir/R4/patient.html#link).
    links: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """``dataclasses.asdict(self)``, field by field (a sixth of its cost): the
        ``source_record.normalized`` JSON. Lists and JSON values are copied."""
        p = self
        return {
            "resource_id": p.resource_id,
            "version_id": p.version_id,
            "last_updated": p.last_updated,
            "active": p.active,
            "names": [_name_dict(n) for n in p.names],
            "birth_date": p.birth_date,
            "birth_year": p.birth_year,
            "birth_month": p.birth_month,
            "birth_day": p.birth_day,
            "gender": p.gender,
            "deceased": p.deceased,
            "deceased_datetime": p.deceased_datetime,
            "identifiers": [_identifier_dict(i) for i in p.identifiers],
            "telecom": [_contact_point_dict(t) for t in p.telecom],
            "addresses": [_address_dict(a) for a in p.addresses],
            "race": _copy_json(p.race),
            "ethnicity": _copy_json(p.ethnicity),
            "birth_sex": p.birth_sex,
            "languages": _copy_json(p.languages),
            "contacts": _copy_json(p.contacts),
            "general_practitioner": _copy_json(p.general_practitioner),
            "managing_organization": _copy_json(p.managing_organization),
            "extensions": _copy_json(p.extensions),
            "multiple_birth": p.multiple_birth,
            "modifier_extensions": _copy_json(p.modifier_extensions),
            "primitive_extensions": _copy_json(p.primitive_extensions),
            "links": _copy_json(p.links),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourcePatient:
        return _from_dict(cls, data)


@dataclass(slots=True)
class Coding:
    system: str | None = None
    code: str | None = None
    display: str | None = None


@dataclass(slots=True)
class SourceEncounter:
    resource_id: str
    version_id: str | None = None
    last_updated: str | None = None
    #: The source Patient's id (from ``subject`` "Patient/<id>"), or None.
    patient_id: str | None = None
    status: str | None = None
    class_code: Coding | None = None
    types: list[Coding] = field(default_factory=list)
    period: Period | None = None
    reasons: list[Coding] = field(default_factory=list)
    identifiers: list[Identifier] = field(default_factory=list)
    locations: list[dict[str, Any]] = field(default_factory=list)
    participants: list[dict[str, Any]] = field(default_factory=list)
    service_provider: dict[str, Any] | None = None
    #: Every extension of the Encounter, kept as JSON.
    extensions: list[dict[str, Any]] = field(default_factory=list)
    #: Reason references (``reasonReference``), as JSON.
    reason_references: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceEncounter:
        return _from_dict(cls, data)


_LEAVES = frozenset({str, int, float, bool, type(None)})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _as_dict(value: Any) -> Any:
    """``dataclasses.asdict`` for these records, without its per-value ``deepcopy``
    (their leaves are immutable: str, int, float, bool, None); the same output."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is list:
        return [_as_dict(v) for v in value]
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES[kind] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return {name: _as_dict(getattr(value, name)) for name in names}
    if isinstance(value, dict):
        return {k: _as_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_as_dict(v) for v in value)
    return value


def _copy_json(value: Any) -> Any:
    """:func:`_as_dict` of a JSON value kept as given (extensions, contacts…): a copy, so
    the stored dict shares nothing with the resource it came from."""
    kind = type(value)
    if kind is list:
        return [_copy_json(v) for v in value] if value else []
    if kind is dict:
        return {k: _copy_json(v) for k, v in value.items()}
    return _as_dict(value)


# ``to_dict`` of a SourcePatient's parts, written out field by field (in field order,
# like ``asdict``); tests/fhir_mapping/test_b2_golden.py checks them against ``asdict``.
# Their lists hold strings only, so a slice copies them as ``asdict`` would.


def _period_dict(period: Period | None) -> dict[str, Any] | None:
    return None if period is None else {"start": period.start, "end": period.end}


def _name_dict(n: PersonName) -> dict[str, Any]:
    return {
        "use": n.use,
        "text": n.text,
        "family": n.family,
        "given": n.given[:],
        "prefix": n.prefix[:],
        "suffix": n.suffix[:],
        "period": _period_dict(n.period),
        "family_folded": n.family_folded,
        "family_alternates": n.family_alternates[:],
        "family_tokens": n.family_tokens[:],
        "given_folded": n.given_folded[:],
        "given_canonical": n.given_canonical[:],
        "suffix_normalized": n.suffix_normalized,
        "family_first": n.family_first,
        "swapped_suspect": n.swapped_suspect,
    }


def _identifier_dict(i: Identifier) -> dict[str, Any]:
    return {
        "system": i.system,
        "value": i.value,
        "value_normalized": i.value_normalized,
        "kind": i.kind,
        "use": i.use,
        "type_code": i.type_code,
        "valid": i.valid,
        "period": _period_dict(i.period),
    }


def _contact_point_dict(t: ContactPoint) -> dict[str, Any]:
    return {
        "system": t.system,
        "value": t.value,
        "value_normalized": t.value_normalized,
        "use": t.use,
        "rank": t.rank,
        "period": _period_dict(t.period),
    }


def _address_dict(a: Address) -> dict[str, Any]:
    return {
        "use": a.use,
        "type": a.type,
        "text": a.text,
        "line": a.line[:],
        "city": a.city,
        "district": a.district,
        "state": a.state,
        "postal_code": a.postal_code,
        "country": a.country,
        "period": _period_dict(a.period),
        "line_normalized": a.line_normalized,
        "city_folded": a.city_folded,
        "postal_normalized": a.postal_normalized,
    }


#: Per record class: its field names, the same in field order, and its fields holding
#: nested records (name, position, record class).
_Spec = tuple[frozenset[str], tuple[str, ...], tuple[tuple[str, int, type], ...]]
_SPECS: dict[type, _Spec] = {}


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a dataclass tree from ``asdict`` output; unknown keys are ignored and
    missing ones take their defaults (rows written by older versions). The nested
    records are known per class (``_NESTED``).

    A dict holding exactly the fields (what ``to_dict`` writes) is passed by position:
    keyword arguments whose names are not interned strings (json and orjson make new
    ones) are matched to the parameters by string comparison, which made a stored
    SourcePatient read back in 19 us instead of 11."""
    names, order, nested = _SPECS.get(cls) or _spec(cls)
    values = _in_order(data, order)
    if values is not None:
        for _, index, target in nested:
            value = values[index]
            if value is None:
                continue
            if isinstance(value, list):
                values[index] = [_from_dict(target, v) for v in value]
            else:
                values[index] = _from_dict(target, value)
        return cls(*values)
    kwargs = data if data.keys() <= names else {k: v for k, v in data.items() if k in names}
    rebuilt: dict[str, Any] | None = None
    for name, _, target in nested:
        value = kwargs.get(name)
        if value is None:
            continue
        if rebuilt is None:
            rebuilt = dict(kwargs)
        if isinstance(value, list):
            rebuilt[name] = [_from_dict(target, v) for v in value]
        else:
            rebuilt[name] = _from_dict(target, value)
    return cls(**(kwargs if rebuilt is None else rebuilt))


def _in_order(data: dict[str, Any], order: tuple[str, ...]) -> list[Any] | None:
    """The values of ``data`` in field order if it holds exactly the fields, else None
    (as many keys, each field found: no set comparison of the keys)."""
    if len(data) != len(order):
        return None
    try:
        return list(map(data.__getitem__, order))
    except KeyError:
        return None


def _spec(cls: type) -> _Spec:
    order = tuple(f.name for f in dataclasses.fields(cls))
    nested: list[tuple[str, int, type]] = []
    for key, target in _NESTED.items():
        owner, _, name = key.partition(".")
        if owner == cls.__name__ and name in order:
            nested.append((name, order.index(name), target))
    _SPECS[cls] = (frozenset(order), order, tuple(nested))
    return _SPECS[cls]


_NESTED: dict[str, type] = {
    "SourcePatient.names": PersonName,
    "SourcePatient.identifiers": Identifier,
    "SourcePatient.telecom": ContactPoint,
    "SourcePatient.addresses": Address,
    "PersonName.period": Period,
    "Identifier.period": Period,
    "ContactPoint.period": Period,
    "Address.period": Period,
    "SourceEncounter.class_code": Coding,
    "SourceEncounter.types": Coding,
    "SourceEncounter.period": Period,
    "SourceEncounter.reasons": Coding,
    "SourceEncounter.identifiers": Identifier,
}


@dataclass(slots=True)
class GoldenLink:
    """A ``Patient.link`` entry of a golden record ("replaced-by", "replaces", "seealso")."""

    other_id: str
    type: str


@dataclass(slots=True)
class GoldenRecord:
    """The surviving view of one person, as ``mpi`` computes it and ``render_golden_patient``
    renders it. Lists are ranked, best first; each value keeps its source in ``sources``."""

    id: str
    names: list[PersonName] = field(default_factory=list)
    birth_date: str | None = None
    gender: str | None = None
    deceased: bool | None = None
    deceased_datetime: str | None = None
    identifiers: list[Identifier] = field(default_factory=list)
    telecom: list[ContactPoint] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)
    languages: list[dict[str, Any]] = field(default_factory=list)
    race: dict[str, Any] | None = None
    ethnicity: dict[str, Any] | None = None
    birth_sex: str | None = None
    links: list[GoldenLink] = field(default_factory=list)
    #: False once merged into another golden record.
    active: bool = True
    #: ``multipleBirthBoolean`` / ``multipleBirthInteger`` (a twin's birth order).
    multiple_birth: bool | int | None = None
    #: ``Patient.contact`` entries (next of kin…), as FHIR JSON.
    contacts: list[dict[str, Any]] = field(default_factory=list)
