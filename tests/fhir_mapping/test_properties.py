"""Property-based tests (hypothesis): normalization is idempotent, render(parse(x))
validates for any valid Patient, and arbitrary JSON raises nothing but InvalidResource."""

from __future__ import annotations

import json
import string
from typing import Any

import phonenumbers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_mapping import (
    InvalidResource,
    SourceEncounter,
    SourcePatient,
    fold_text,
    golden_record_from_patient,
    nickname_key,
    normalize_email,
    normalize_line,
    normalize_phone,
    normalize_postal_code,
    parse_encounter,
    parse_encounter_core,
    parse_patient,
    render_golden_patient,
    validate_resource,
)
from fhir_mapping.contact import _parse_phone
from fhir_mapping.identifiers import normalize_identifier_value
from fhir_mapping.search import fold_name

EXAMPLES = 150
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
GOLDEN_ID = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"

# Letters of many scripts (Latin with diacritics, Cyrillic, Greek, Arabic, CJK, Vietnamese…)
# without control characters or unusual white space, which FHIR strings do not allow.
letters = st.characters(categories=("L", "M", "N", "P", "S"))
words = st.text(letters, min_size=1, max_size=12)
fhir_strings = st.lists(words, min_size=1, max_size=3).map(" ".join)
ids = st.text(string.ascii_letters + string.digits + "-.", min_size=1, max_size=64)
years = st.integers(1900, 2025)


@st.composite
def dates(draw: st.DrawFn) -> str:
    year = draw(years)
    precision = draw(st.sampled_from(["year", "month", "day"]))
    if precision == "year":
        return f"{year:04d}"
    month = draw(st.integers(1, 12))
    if precision == "month":
        return f"{year:04d}-{month:02d}"
    return f"{year:04d}-{month:02d}-{draw(st.integers(1, 28)):02d}"


periods = st.fixed_dictionaries({}, optional={"start": dates(), "end": dates()})
human_names = st.fixed_dictionaries(
    {},
    optional={
        "use": st.sampled_from(
            ["usual", "official", "temp", "nickname", "anonymous", "old", "maiden"]
        ),
        "text": fhir_strings,
        "family": fhir_strings,
        "given": st.lists(fhir_strings, min_size=1, max_size=3),
        "prefix": st.lists(fhir_strings, min_size=1, max_size=1),
        "suffix": st.lists(st.sampled_from(["Jr.", "Sr", "III", "PhD"]), min_size=1, max_size=2),
        "period": periods,
    },
)
phones = st.one_of(
    st.from_regex(r"\A\(?[2-9]\d\d\)? ?\d{3}-\d{4}\Z"),
    st.from_regex(r"\A\+\d{1,3} \d{2,4} \d{4,8}\Z"),
    fhir_strings,
)
telecoms = st.one_of(
    st.fixed_dictionaries(
        {"system": st.sampled_from(["phone", "sms", "fax"]), "value": phones},
        optional={
            "use": st.sampled_from(["home", "work", "mobile", "old"]),
            "rank": st.integers(1, 9),
        },
    ),
    st.fixed_dictionaries(
        {"system": st.just("email"), "value": st.emails().map(str)},
        optional={"period": periods},
    ),
)
addresses = st.fixed_dictionaries(
    {},
    optional={
        "use": st.sampled_from(["home", "work", "temp", "old", "billing"]),
        "line": st.lists(fhir_strings, min_size=1, max_size=2),
        "city": fhir_strings,
        "postalCode": st.one_of(st.from_regex(r"\A\d{5}(-\d{4})?\Z"), fhir_strings),
        "country": st.sampled_from(["US", "USA", "GB", "DE", "Lietuva", "Viet Nam"]),
        "period": periods,
    },
)
identifiers = st.fixed_dictionaries(
    {
        "system": st.sampled_from(
            [
                "http://hl7.org/fhir/sid/us-ssn",
                "urn:oid:2.16.840.1.113883.4.3.25",
                "http://hl7.org/fhir/sid/passport-USA",
                "urn:oid:1.2.3.4",
            ]
        ),
        "value": fhir_strings,
    },
    optional={"use": st.sampled_from(["usual", "official", "secondary", "old"])},
)


@st.composite
def patients(draw: st.DrawFn) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient", "id": draw(ids)}
    optional = {
        "active": st.booleans(),
        "name": st.lists(human_names, min_size=1, max_size=3),
        "gender": st.sampled_from(["male", "female", "other", "unknown"]),
        "birthDate": dates(),
        "telecom": st.lists(telecoms, min_size=1, max_size=3),
        "address": st.lists(addresses, min_size=1, max_size=2),
        "identifier": st.lists(identifiers, min_size=1, max_size=3),
        "multipleBirthInteger": st.integers(1, 4),
        "contact": st.lists(
            st.fixed_dictionaries(
                {"name": st.fixed_dictionaries({"family": fhir_strings})},
                optional={
                    "gender": st.sampled_from(["male", "female"]),
                    "telecom": st.lists(telecoms, max_size=1),
                },
            ),
            min_size=1,
            max_size=2,
        ),
        "communication": st.lists(
            st.fixed_dictionaries(
                {"language": st.fixed_dictionaries({"coding": st.just([{"code": "vi"}])})},
                optional={"preferred": st.booleans()},
            ),
            min_size=1,
            max_size=2,
        ),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            patient[key] = draw(strategy)
    deceased = draw(st.sampled_from([None, "bool", "datetime"]))
    if deceased == "bool":
        patient["deceasedBoolean"] = draw(st.booleans())
    elif deceased == "datetime":
        patient["deceasedDateTime"] = draw(dates())
    return patient


@PROPERTY_SETTINGS
@given(patients())
def test_render_of_parse_validates_for_any_valid_patient(raw: dict[str, Any]) -> None:
    validate_resource(raw, "Patient")  # the generator makes valid Patients only
    patient = parse_patient(raw)
    assert SourcePatient.from_dict(json.loads(json.dumps(patient.to_dict()))) == patient
    rendered = render_golden_patient(golden_record_from_patient(patient, GOLDEN_ID), version=1)
    validate_resource(rendered, "Patient")
    assert len(rendered.get("identifier", [])) == len(raw.get("identifier", []))
    assert rendered.get("contact", []) == raw.get("contact", [])
    assert rendered.get("birthDate") == raw.get("birthDate")


encounter_statuses = st.sampled_from(
    ["planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled"]
)
references = st.one_of(
    ids.map(lambda i: {"reference": f"Patient/{i}"}),
    ids.map(lambda i: {"reference": f"https://ehr.example.org/fhir/Patient/{i}/_history/1"}),
    ids.map(lambda i: {"reference": f"Group/{i}"}),
)
codings = st.fixed_dictionaries(
    {"code": ids}, optional={"system": st.just("http://snomed.info/sct"), "display": fhir_strings}
)


@st.composite
def encounters(draw: st.DrawFn) -> dict[str, Any]:
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": draw(ids),
        "status": draw(encounter_statuses),
        "class": draw(codings),
    }
    optional = {
        "subject": references,
        "period": periods,
        "type": st.lists(
            st.fixed_dictionaries({"coding": st.lists(codings, min_size=1)}), min_size=1
        ),
        "reasonCode": st.lists(st.fixed_dictionaries({"text": fhir_strings}), min_size=1),
        "identifier": st.lists(identifiers, min_size=1, max_size=2),
        "serviceProvider": st.just({"reference": "Organization/1"}),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            encounter[key] = draw(strategy)
    return encounter


@PROPERTY_SETTINGS
@given(encounters())
def test_any_valid_encounter_parses_and_round_trips(raw: dict[str, Any]) -> None:
    validate_resource(raw, "Encounter")
    encounter = parse_encounter(raw)
    assert SourceEncounter.from_dict(json.loads(json.dumps(encounter.to_dict()))) == encounter
    reference = raw.get("subject", {}).get("reference", "")
    assert (encounter.patient_id is not None) == ("Patient/" in reference)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
patient_keys = st.sampled_from(
    ["id", "name", "birthDate", "gender", "telecom", "address", "identifier", "deceasedBoolean",
     "deceasedDateTime", "active", "communication", "extension", "_birthDate", "contact", "link",
     "multipleBirthInteger", "meta", "contained", "resourceType"]
)  # fmt: skip


@st.composite
def mutated_patients(draw: st.DrawFn) -> dict[str, Any]:
    """A valid Patient with some of its elements replaced by arbitrary JSON."""
    patient = draw(patients())
    for _ in range(draw(st.integers(1, 3))):
        patient[draw(patient_keys)] = draw(json_values)
    return patient


def parses_or_invalid(raw: Any) -> None:
    for parse in (parse_patient, parse_encounter, parse_encounter_core, validate_resource):
        try:
            parse(raw)
        except InvalidResource as error:
            assert error.issues
            error.to_operation_outcome()


@PROPERTY_SETTINGS
@given(json_values)
def test_arbitrary_json_raises_only_invalid_resource(raw: Any) -> None:
    parses_or_invalid(raw)


@PROPERTY_SETTINGS
@given(mutated_patients())
def test_damaged_patients_raise_only_invalid_resource(raw: dict[str, Any]) -> None:
    parses_or_invalid(raw)


@PROPERTY_SETTINGS
@given(st.text(max_size=40))
def test_text_normalizers_are_idempotent(value: str) -> None:
    for normalize in (fold_text, fold_name, normalize_line, normalize_email):
        once = normalize(value)
        assert normalize(once) == once
    folded = fold_name(value)
    assert nickname_key(nickname_key(folded)) == nickname_key(folded)
    for kind in ("ssn", "mrn"):
        once = normalize_identifier_value(value, kind)
        assert normalize_identifier_value(once, kind) == once


@PROPERTY_SETTINGS
@given(phones, st.sampled_from(["US", "DE", "LT", "VN", "GB"]))
def test_phone_normalization_is_idempotent(value: str, region: str) -> None:
    once = normalize_phone(value, region)
    assert once == "" or normalize_phone(once, region) == once


@PROPERTY_SETTINGS
@given(st.text(max_size=12), st.sampled_from([None, "US", "GB", "Canada", "NL", "LT"]))
def test_postal_normalization_is_idempotent(value: str, country: str | None) -> None:
    once = normalize_postal_code(value, country)
    assert normalize_postal_code(once, country) == once


country_codes = st.sampled_from(sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE))


@PROPERTY_SETTINGS
@given(country_codes, st.text("0123456789", min_size=1, max_size=15), st.sampled_from(["US", "DE"]))
def test_phone_shortcuts_agree_with_phonenumbers_parse(
    code: int, national: str, region: str
) -> None:
    """International and North American numbers skip re-parsing; the E.164 must be the
    one ``phonenumbers.parse`` gives."""
    for text in (f"+{code}{national}", f"+{code} {national}", national):
        digits = "".join(c for c in text if c.isdigit())
        parsed = _parse_phone(("+" if text.startswith("+") else "") + digits, region)
        assert normalize_phone(text, region) == parsed
