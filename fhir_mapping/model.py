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
    #: The source's ``type`` (a CodeableConcept, FHIR JSON) where it says more than the
    #: v2-0203 coding of ``type_code`` (another code system, a text, a display); None
    #: where that coding is all it is (:func:`fhir_mapping.identifiers.normalize_identifier`).
    type: dict[str, Any] | None = None


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
    #: ``maritalStatus``, a CodeableConcept as JSON.
    marital_status: dict[str, Any] | None = None

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
            "marital_status": _copy_json(p.marital_status),
        }

    def to_compact_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the fields at their defaults (None, "", [], {}, False,
        the default ``kind`` and ``valid``), at every level: the ``source_record.normalized``
        JSON. A generated Patient's text is ~0.94 KB instead of ~1.5 KB (the full form
        spells out two dozen nulls, empty lists and flags per record); callgrind, 1000
        generated Patients: dict and orjson text 92.5k -> 52.5k instructions a record,
        ``json.loads`` and :meth:`from_dict` 226.5k -> 162.6k. :meth:`from_dict` reads a
        missing key as its default, so the record reads back equal. Lists and JSON values
        are copied, as in :meth:`to_dict`."""
        p = self
        out: dict[str, Any] = {"resource_id": p.resource_id}
        if p.version_id is not None:
            out["version_id"] = p.version_id
        if p.last_updated is not None:
            out["last_updated"] = p.last_updated
        if p.active is not None:
            out["active"] = p.active
        if p.names:
            out["names"] = [_compact_name(n) for n in p.names]
        if p.birth_date is not None:
            out["birth_date"] = p.birth_date
        if p.birth_year is not None:
            out["birth_year"] = p.birth_year
        if p.birth_month is not None:
            out["birth_month"] = p.birth_month
        if p.birth_day is not None:
            out["birth_day"] = p.birth_day
        if p.gender is not None:
            out["gender"] = p.gender
        if p.deceased is not None:
            out["deceased"] = p.deceased
        if p.deceased_datetime is not None:
            out["deceased_datetime"] = p.deceased_datetime
        if p.identifiers:
            out["identifiers"] = [_compact_identifier(i) for i in p.identifiers]
        if p.telecom:
            out["telecom"] = [_compact_contact_point(t) for t in p.telecom]
        if p.addresses:
            out["addresses"] = [_compact_address(a) for a in p.addresses]
        if p.race is not None:
            out["race"] = _copy_json(p.race)
        if p.ethnicity is not None:
            out["ethnicity"] = _copy_json(p.ethnicity)
        if p.birth_sex is not None:
            out["birth_sex"] = p.birth_sex
        if p.languages:
            out["languages"] = _copy_json(p.languages)
        if p.contacts:
            out["contacts"] = _copy_json(p.contacts)
        if p.general_practitioner:
            out["general_practitioner"] = _copy_json(p.general_practitioner)
        if p.managing_organization is not None:
            out["managing_organization"] = _copy_json(p.managing_organization)
        if p.extensions:
            out["extensions"] = _copy_json(p.extensions)
        if p.multiple_birth is not None:
            out["multiple_birth"] = p.multiple_birth
        if p.modifier_extensions:
            out["modifier_extensions"] = _copy_json(p.modifier_extensions)
        if p.primitive_extensions:
            out["primitive_extensions"] = _copy_json(p.primitive_extensions)
        if p.links:
            out["links"] = _copy_json(p.links)
        if p.marital_status is not None:
            out["marital_status"] = _copy_json(p.marital_status)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourcePatient:
        """Read :meth:`to_dict` or :meth:`to_compact_dict` output (databases hold both):
        a dict of as many keys as fields (the full form) by position, any other key by
        key; a missing key is its field's default, unknown keys are ignored."""
        if len(data) == _PATIENT_FIELD_COUNT:
            return _from_dict(cls, data)
        return _patient_from_keys(data)


@dataclass(slots=True)
class Coding:
    system: str | None = None
    code: str | None = None
    display: str | None = None


@dataclass(slots=True)
class EncounterCore:
    """What a sync stores of an Encounter besides the resource itself
    (:func:`fhir_mapping.parse_encounter_core`): :class:`SourceEncounter`'s first fields
    and its period, without the codings, identifiers and references it also builds."""

    resource_id: str
    version_id: str | None = None
    last_updated: str | None = None
    patient_id: str | None = None
    status: str | None = None
    class_code: Coding | None = None
    period: Period | None = None


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
        "type": None if i.type is None else _copy_json(i.type),
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


# ``to_compact_dict`` of a SourcePatient's parts: ``to_dict`` of each without the fields
# at their dataclass defaults (``kind`` "other" and ``valid`` True included), and the
# readers of both forms. tests/fhir_mapping/test_hc_compact.py holds both to the dataclass
# fields (every field non-default, every field default) and to the full form's reader.


def _compact_period(period: Period) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if period.start is not None:
        out["start"] = period.start
    if period.end is not None:
        out["end"] = period.end
    return out


def _compact_name(n: PersonName) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if n.use is not None:
        out["use"] = n.use
    if n.text is not None:
        out["text"] = n.text
    if n.family is not None:
        out["family"] = n.family
    if n.given:
        out["given"] = n.given[:]
    if n.prefix:
        out["prefix"] = n.prefix[:]
    if n.suffix:
        out["suffix"] = n.suffix[:]
    if n.period is not None:
        out["period"] = _compact_period(n.period)
    if n.family_folded != "":
        out["family_folded"] = n.family_folded
    if n.family_alternates:
        out["family_alternates"] = n.family_alternates[:]
    if n.family_tokens:
        out["family_tokens"] = n.family_tokens[:]
    if n.given_folded:
        out["given_folded"] = n.given_folded[:]
    if n.given_canonical:
        out["given_canonical"] = n.given_canonical[:]
    if n.suffix_normalized is not None:
        out["suffix_normalized"] = n.suffix_normalized
    if n.family_first is not False:
        out["family_first"] = n.family_first
    if n.swapped_suspect is not False:
        out["swapped_suspect"] = n.swapped_suspect
    return out


def _compact_identifier(i: Identifier) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if i.system is not None:
        out["system"] = i.system
    if i.value is not None:
        out["value"] = i.value
    if i.value_normalized != "":
        out["value_normalized"] = i.value_normalized
    if i.kind != "other":
        out["kind"] = i.kind
    if i.use is not None:
        out["use"] = i.use
    if i.type_code is not None:
        out["type_code"] = i.type_code
    if i.valid is not True:
        out["valid"] = i.valid
    if i.period is not None:
        out["period"] = _compact_period(i.period)
    if i.type is not None:
        out["type"] = _copy_json(i.type)
    return out


def _compact_contact_point(t: ContactPoint) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if t.system is not None:
        out["system"] = t.system
    if t.value is not None:
        out["value"] = t.value
    if t.value_normalized != "":
        out["value_normalized"] = t.value_normalized
    if t.use is not None:
        out["use"] = t.use
    if t.rank is not None:
        out["rank"] = t.rank
    if t.period is not None:
        out["period"] = _compact_period(t.period)
    return out


def _compact_address(a: Address) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if a.use is not None:
        out["use"] = a.use
    if a.type is not None:
        out["type"] = a.type
    if a.text is not None:
        out["text"] = a.text
    if a.line:
        out["line"] = a.line[:]
    if a.city is not None:
        out["city"] = a.city
    if a.district is not None:
        out["district"] = a.district
    if a.state is not None:
        out["state"] = a.state
    if a.postal_code is not None:
        out["postal_code"] = a.postal_code
    if a.country is not None:
        out["country"] = a.country
    if a.period is not None:
        out["period"] = _compact_period(a.period)
    if a.line_normalized != "":
        out["line_normalized"] = a.line_normalized
    if a.city_folded != "":
        out["city_folded"] = a.city_folded
    if a.postal_normalized != "":
        out["postal_normalized"] = a.postal_normalized
    return out


#: Marks a key the stored dict does not hold.
_ABSENT: Any = object()


def _period_from(value: Any) -> Any:
    if value is None:
        return None
    if type(value) is dict:
        return Period(value.get("start"), value.get("end"))
    return _nested(Period, value)


def _name_from(data: dict[str, Any]) -> PersonName:
    get = data.get
    return PersonName(
        get("use"),
        get("text"),
        get("family"),
        get("given", []),
        get("prefix", []),
        get("suffix", []),
        _period_from(get("period")),
        get("family_folded", ""),
        get("family_alternates", []),
        get("family_tokens", []),
        get("given_folded", []),
        get("given_canonical", []),
        get("suffix_normalized"),
        get("family_first", False),
        get("swapped_suspect", False),
    )


def _identifier_from(data: dict[str, Any]) -> Identifier:
    get = data.get
    return Identifier(
        get("system"),
        get("value"),
        get("value_normalized", ""),
        get("kind", "other"),
        get("use"),
        get("type_code"),
        get("valid", True),
        _period_from(get("period")),
        get("type"),
    )


def _contact_point_from(data: dict[str, Any]) -> ContactPoint:
    get = data.get
    return ContactPoint(
        get("system"),
        get("value"),
        get("value_normalized", ""),
        get("use"),
        get("rank"),
        _period_from(get("period")),
    )


def _address_from(data: dict[str, Any]) -> Address:
    get = data.get
    return Address(
        get("use"),
        get("type"),
        get("text"),
        get("line", []),
        get("city"),
        get("district"),
        get("state"),
        get("postal_code"),
        get("country"),
        _period_from(get("period")),
        get("line_normalized", ""),
        get("city_folded", ""),
        get("postal_normalized", ""),
    )


def _records(value: Any, read: Any, cls: type) -> Any:
    """The records of a stored list field: ``[]`` when the key is missing; a null, or
    a single record where the list belongs, read as :func:`_from_dict` reads them."""
    if type(value) is list:
        return [read(v) if type(v) is dict else _nested(cls, v) for v in value]
    if value is _ABSENT:
        return []
    return _nested(cls, value)


def _nested(cls: type, value: Any) -> Any:
    """What :func:`_from_dict` makes of a value stored where records of ``cls`` belong."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_from_dict(cls, v) for v in value]
    return _from_dict(cls, value)


def _patient_from_keys(data: dict[str, Any]) -> SourcePatient:
    """A SourcePatient from any stored dict but the full form, key by key: the compact
    form holds ~10 of the 28 keys, read by ``dict.get`` with the field's default (the
    kwargs path of :func:`_from_dict` compares its keyword names as strings)."""
    if "resource_id" not in data:
        return _from_dict(SourcePatient, data)  # raises its TypeError
    get = data.get
    return SourcePatient(
        data["resource_id"],
        get("version_id"),
        get("last_updated"),
        get("active"),
        _records(get("names", _ABSENT), _name_from, PersonName),
        get("birth_date"),
        get("birth_year"),
        get("birth_month"),
        get("birth_day"),
        get("gender"),
        get("deceased"),
        get("deceased_datetime"),
        _records(get("identifiers", _ABSENT), _identifier_from, Identifier),
        _records(get("telecom", _ABSENT), _contact_point_from, ContactPoint),
        _records(get("addresses", _ABSENT), _address_from, Address),
        get("race"),
        get("ethnicity"),
        get("birth_sex"),
        get("languages", []),
        get("contacts", []),
        get("general_practitioner", []),
        get("managing_organization"),
        get("extensions", []),
        get("multiple_birth"),
        get("modifier_extensions", []),
        get("primitive_extensions", {}),
        get("links", []),
        get("marital_status"),
    )


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


_PATIENT_FIELD_COUNT = len(dataclasses.fields(SourcePatient))

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
    #: ``maritalStatus``, a CodeableConcept as FHIR JSON.
    marital_status: dict[str, Any] | None = None
