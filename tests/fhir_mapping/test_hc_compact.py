"""The compact ``source_record.normalized`` form (``SourcePatient.to_compact_dict``): the
fields at their defaults left out at every level, read back by ``from_dict`` as the same
record; the full form (``to_dict``, what databases written before hold) still reads back
the same, and so do the stored-JSON readers of ``mpi`` that read keys directly."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_mapping import (
    Address,
    ContactPoint,
    Identifier,
    Period,
    PersonName,
    SourcePatient,
)
from mpi.features import extract_features, features_from_normalized
from tests.fhir_mapping.test_b2_golden import CASES, _parse

#: A row stored before the compact form (a generated Patient's ``to_dict``).
OLD_ROW: dict[str, Any] = {
    "resource_id": "a-008273",
    "version_id": "1",
    "last_updated": "2026-01-15T09:30:00Z",
    "active": True,
    "names": [
        {
            "use": "official",
            "text": None,
            "family": "Harris",
            "given": ["Jennifer"],
            "prefix": [],
            "suffix": [],
            "period": None,
            "family_folded": "harris",
            "family_alternates": [],
            "family_tokens": ["harris"],
            "given_folded": ["jennifer"],
            "given_canonical": ["jennifer"],
            "suffix_normalized": None,
            "family_first": False,
            "swapped_suspect": False,
        }
    ],
    "birth_date": "1931-08-02",
    "birth_year": 1931,
    "birth_month": 8,
    "birth_day": 2,
    "gender": "female",
    "deceased": None,
    "deceased_datetime": None,
    "identifiers": [
        {
            "system": "http://ehr-a.example.org/fhir/mrn",
            "value": "A-008273",
            "value_normalized": "A008273",
            "kind": "mrn",
            "use": "usual",
            "type_code": "MR",
            "valid": True,
            "period": None,
        },
        {
            "system": "http://hl7.org/fhir/sid/us-ssn",
            "value": "148-78-7616",
            "value_normalized": "148787616",
            "kind": "ssn",
            "use": None,
            "type_code": "SS",
            "valid": True,
            "period": None,
        },
    ],
    "telecom": [
        {
            "system": "phone",
            "value": "(713) 453-4383",
            "value_normalized": "+17134534383",
            "use": "home",
            "rank": None,
            "period": None,
        }
    ],
    "addresses": [
        {
            "use": "home",
            "type": None,
            "text": None,
            "line": ["208 2nd St"],
            "city": "Dearborn",
            "district": None,
            "state": "MI",
            "postal_code": "48109",
            "country": "US",
            "period": None,
            "line_normalized": "208 2nd st",
            "city_folded": "dearborn",
            "postal_normalized": "48109",
        }
    ],
    "race": None,
    "ethnicity": None,
    "birth_sex": None,
    "languages": [],
    "contacts": [],
    "general_practitioner": [],
    "managing_organization": None,
    "extensions": [],
    "multiple_birth": None,
    "modifier_extensions": [],
    "primitive_extensions": {},
    "links": [],
}


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _without_defaults(record: Any) -> Any:
    """The compact form by its definition: ``asdict`` of every record, each field whose
    value is its dataclass default (same type, same value) left out."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        out = {}
        for field in dataclasses.fields(record):
            value = getattr(record, field.name)
            required = field.default is dataclasses.MISSING
            required &= field.default_factory is dataclasses.MISSING
            default = None if required else _default(field)
            if required or not (type(value) is type(default) and value == default):
                out[field.name] = _without_defaults(value)
        return out
    if isinstance(record, list):
        return [_without_defaults(v) for v in record]
    return dataclasses.asdict(record) if dataclasses.is_dataclass(record) else record


def _through_json(value: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(value))
    return data


def test_compact_form_leaves_out_exactly_the_defaults_and_round_trips() -> None:
    for case in CASES:
        patient = _parse(case)
        compact = patient.to_compact_dict()
        assert compact == _without_defaults(patient)
        assert SourcePatient.from_dict(_through_json(compact)) == patient
        assert SourcePatient.from_dict(_through_json(patient.to_dict())) == patient


def test_compact_form_is_smaller_than_the_full_one() -> None:
    full = sum(len(json.dumps(_parse(c).to_dict())) for c in CASES)
    compact = sum(len(json.dumps(_parse(c).to_compact_dict())) for c in CASES)
    assert compact < full * 0.75


def test_a_record_at_its_defaults_is_its_id_and_one_without_any_keeps_every_key() -> None:
    empty = SourcePatient(
        "x",
        names=[PersonName()],
        identifiers=[Identifier()],
        telecom=[ContactPoint()],
        addresses=[Address()],
    )
    assert empty.to_compact_dict() == {
        "resource_id": "x",
        "names": [{}],
        "identifiers": [{}],
        "telecom": [{}],
        "addresses": [{}],
    }
    assert SourcePatient.from_dict(empty.to_compact_dict()) == empty
    assert SourcePatient.from_dict({"resource_id": "y"}) == SourcePatient("y")
    full = _every_field_set()
    assert _through_json(full.to_compact_dict()) == _through_json(full.to_dict())
    assert SourcePatient.from_dict(_through_json(full.to_compact_dict())) == full


def test_the_old_full_form_reads_back_as_before() -> None:
    patient = SourcePatient.from_dict(OLD_ROW)
    expected = json.loads(json.dumps(OLD_ROW))
    for identifier in expected["identifiers"]:
        identifier["type"] = None  # fields added since: their defaults
    expected["marital_status"] = None
    assert patient.to_dict() == expected
    assert SourcePatient.from_dict(patient.to_compact_dict()) == patient
    assert patient.identifiers[1].use is None and patient.names[0].period is None


def test_the_compact_form_does_not_share_the_record() -> None:
    patient = _every_field_set()
    compact = patient.to_compact_dict()
    compact["names"][0]["given"].append("changed")
    compact["contacts"][0]["changed"] = True
    compact["primitive_extensions"]["_birthDate"]["changed"] = True
    assert patient == _every_field_set()


def test_features_read_from_the_compact_form_are_the_records() -> None:
    """``mpi.features.features_from_normalized`` reads the stored keys directly: a missing
    key must be read as the dataclass default there too."""
    for case in CASES:
        patient = _parse(case)
        stored = _through_json(patient.to_compact_dict())
        assert features_from_normalized(stored) == extract_features(patient)


def _every_field_set() -> SourcePatient:
    period = Period("2001-01-01", "2002-02-02")
    return SourcePatient(
        resource_id="r1",
        version_id="7",
        last_updated="2026-01-15T09:30:00Z",
        active=False,
        names=[
            PersonName(
                "official",
                "Nguyễn Văn An",
                "Nguyễn",
                ["An"],
                ["Mr"],
                ["Jr"],
                period,
                "nguyen",
                ["ngyen"],
                ["nguyen"],
                ["an"],
                ["an"],
                "jr",
                True,
                True,
            )
        ],
        birth_date="1970-03-14",
        birth_year=1970,
        birth_month=3,
        birth_day=14,
        gender="male",
        deceased=True,
        deceased_datetime="2020-01-01T00:00:00Z",
        identifiers=[
            Identifier("urn:x", "A-1", "A1", "mrn", "usual", "MR", False, period, {"text": "Chart"})
        ],
        telecom=[ContactPoint("phone", "(415) 555-0123", "+14155550123", "home", 0, period)],
        addresses=[
            Address(
                "home",
                "both",
                "1 Main St",
                ["1 Main St"],
                "Springfield",
                "District",
                "IL",
                "62701",
                "US",
                period,
                "1 main st",
                "springfield",
                "62701",
            )
        ],
        race={"url": "race", "extension": [{"url": "text", "valueString": "x"}]},
        ethnicity={"url": "ethnicity"},
        birth_sex="M",
        languages=[{"system": "urn:ietf:bcp:47", "code": "en", "display": None, "preferred": True}],
        contacts=[{"name": {"family": "Lee"}}],
        general_practitioner=[{"reference": "Practitioner/1"}],
        managing_organization={"reference": "Organization/1"},
        extensions=[{"url": "other", "valueString": "x"}],
        multiple_birth=0,
        modifier_extensions=[{"url": "modifier", "valueBoolean": True}],
        primitive_extensions={"_birthDate": {"extension": [{"url": "time"}]}},
        links=[{"other": {"reference": "Patient/2"}, "type": "seealso"}],
        marital_status={"coding": [{"code": "M"}]},
    )


_texts = st.none() | st.text(max_size=5)
_lists = st.lists(st.text(max_size=5), max_size=2)
_periods = st.none() | st.builds(Period, _texts, _texts)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=4,
)
_json_lists = st.lists(st.dictionaries(st.text(max_size=3), _json, max_size=2), max_size=2)
_json_objects = st.none() | st.dictionaries(st.text(max_size=3), _json, max_size=2)

_names = st.builds(
    PersonName,
    _texts,
    _texts,
    _texts,
    _lists,
    _lists,
    _lists,
    _periods,
    st.text(max_size=5),
    _lists,
    _lists,
    _lists,
    _lists,
    _texts,
    st.booleans(),
    st.booleans(),
)
_identifiers = st.builds(
    Identifier,
    _texts,
    _texts,
    st.text(max_size=5),
    st.sampled_from(["other", "mrn", "ssn"]),
    _texts,
    _texts,
    st.booleans(),
    _periods,
    _json_objects,
)
_contact_points = st.builds(
    ContactPoint,
    _texts,
    _texts,
    st.text(max_size=5),
    _texts,
    st.none() | st.integers(0, 3),
    _periods,
)
_addresses = st.builds(
    Address,
    _texts,
    _texts,
    _texts,
    _lists,
    _texts,
    _texts,
    _texts,
    _texts,
    _texts,
    _periods,
    st.text(max_size=5),
    st.text(max_size=5),
    st.text(max_size=5),
)
_ints = st.none() | st.integers(0, 3000)
_patients = st.builds(
    SourcePatient,
    st.text(min_size=1, max_size=5),
    _texts,
    _texts,
    st.none() | st.booleans(),
    st.lists(_names, max_size=2),
    _texts,
    _ints,
    _ints,
    _ints,
    _texts,
    st.none() | st.booleans(),
    _texts,
    st.lists(_identifiers, max_size=2),
    st.lists(_contact_points, max_size=2),
    st.lists(_addresses, max_size=2),
    _json_objects,
    _json_objects,
    _texts,
    _json_lists,
    _json_lists,
    _json_lists,
    _json_objects,
    _json_lists,
    st.none() | st.booleans() | st.integers(0, 3),
    _json_lists,
    st.dictionaries(st.text(max_size=3), _json, max_size=2),
    _json_lists,
    _json_objects,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_patients)
def test_any_record_round_trips_through_both_forms(patient: SourcePatient) -> None:
    compact = _through_json(patient.to_compact_dict())
    assert compact == _through_json(_without_defaults(patient))
    assert SourcePatient.from_dict(compact) == patient
    assert SourcePatient.from_dict(_through_json(patient.to_dict())) == patient
    assert features_from_normalized(compact) == extract_features(patient)
