"""parse_patient, parse_encounter and the normalizers build their records positionally
(and parse_patient memoizes birth-date parts): the records must equal those built field
by field with keywords, as before, for every kind of input they read.

The references below are the keyword constructions the modules used until then; a
field added to or moved in a dataclass without the positional call following it makes
the records differ here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_mapping import (
    EncounterCore,
    InvalidResource,
    parse_encounter,
    parse_encounter_core,
    parse_patient,
)
from fhir_mapping import patient as patient_module
from fhir_mapping.contact import (
    DEFAULT_REGION,
    _lines_normalized,
    normalize_address,
    normalize_contact_point,
    normalize_email,
    normalize_phone,
    normalize_postal_code,
)
from fhir_mapping.encounter import _concept_codings, subject_patient_id
from fhir_mapping.identifiers import (
    _type_code,
    classify_identifier,
    normalize_identifier,
    normalize_identifier_value,
    ssn_is_valid,
)
from fhir_mapping.model import (
    Address,
    Coding,
    ContactPoint,
    Identifier,
    Period,
    PersonName,
    SourceEncounter,
    SourcePatient,
)
from fhir_mapping.names import _name_features, normalize_name
from fhir_mapping.patient import (
    _PRIMITIVE_EXTENSION_KEYS,
    US_CORE_BIRTH_SEX,
    US_CORE_ETHNICITY,
    US_CORE_RACE,
    _language,
)
from fhir_mapping.search import fold_text, strings
from tools.ehrgen import generate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "fhir"
SEED = 20261123
PERIOD = {"start": "2001-02-03", "end": "2004-05-06T07:08:09Z"}
EXT = {"url": "http://example.org/x", "valueString": "kept"}


def _period(raw: dict[str, Any] | None) -> Period | None:
    return Period(start=raw.get("start"), end=raw.get("end")) if raw else None


def ref_name(raw: dict[str, Any]) -> PersonName:
    family = raw.get("family")
    given = tuple(strings(raw.get("given")))
    text = raw.get("text")
    suffix = tuple(strings(raw.get("suffix")))
    features = _name_features(family, given, text, suffix)
    return PersonName(
        use=raw.get("use"),
        text=text,
        family=family,
        given=list(given),
        prefix=strings(raw.get("prefix")),
        suffix=list(suffix),
        period=_period(raw.get("period")),
        family_folded=features.family_folded,
        family_alternates=list(features.family_alternates),
        family_tokens=list(features.family_tokens),
        given_folded=list(features.given_folded),
        given_canonical=list(features.given_canonical),
        suffix_normalized=features.suffix_normalized,
        family_first=features.family_first,
        swapped_suspect=features.swapped_suspect,
    )


def ref_identifier(raw: dict[str, Any], mrn_system: str | None = None) -> Identifier:
    system = raw.get("system")
    value = raw.get("value")
    raw_type = raw.get("type")
    type_code = _type_code(raw_type)
    kind = classify_identifier(
        system, type_code, raw_type.get("text") if raw_type else None, mrn_system
    )
    normalized = normalize_identifier_value(value, kind) if value else ""
    valid = bool(normalized) and (kind != "ssn" or ssn_is_valid(normalized))
    return Identifier(
        system=system,
        value=value,
        value_normalized=normalized,
        kind=kind,
        use=raw.get("use"),
        type_code=type_code,
        valid=valid,
        period=_period(raw.get("period")),
    )


def ref_contact_point(raw: dict[str, Any], region: str = DEFAULT_REGION) -> ContactPoint:
    system = raw.get("system")
    value = raw.get("value")
    normalized = ""
    if value:
        if system in {"phone", "fax", "sms", "pager"}:
            normalized = normalize_phone(value, region)
        elif system == "email":
            normalized = normalize_email(value)
        else:
            normalized = value.strip()
    return ContactPoint(
        system=system,
        value=value,
        value_normalized=normalized,
        use=raw.get("use"),
        rank=raw.get("rank"),
        period=_period(raw.get("period")),
    )


def ref_address(raw: dict[str, Any]) -> Address:
    lines = strings(raw.get("line"))
    city = raw.get("city")
    postal = raw.get("postalCode")
    country = raw.get("country")
    return Address(
        use=raw.get("use"),
        type=raw.get("type"),
        text=raw.get("text"),
        line=lines,
        city=city,
        district=raw.get("district"),
        state=raw.get("state"),
        postal_code=postal,
        country=country,
        period=_period(raw.get("period")),
        line_normalized=_lines_normalized(tuple(lines)),
        city_folded=fold_text(city) if city else "",
        postal_normalized=normalize_postal_code(postal, country) if postal else "",
    )


def _birth_parts(birth_date: str | None) -> tuple[int | None, int | None, int | None]:
    if not birth_date:
        return None, None, None
    year = int(birth_date[:4])
    month = int(birth_date[5:7]) if len(birth_date) >= 7 else None
    day = int(birth_date[8:10]) if len(birth_date) >= 10 else None
    return year, month, day


def ref_patient(
    raw: dict[str, Any], default_region: str = DEFAULT_REGION, mrn_system: str | None = None
) -> SourcePatient:
    meta = raw.get("meta") or {}
    race = ethnicity = birth_sex = None
    others = []
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
    return SourcePatient(
        resource_id=raw.get("id") or "",
        version_id=meta.get("versionId"),
        last_updated=meta.get("lastUpdated"),
        active=raw.get("active"),
        names=[ref_name(n) for n in raw.get("name") or ()],
        birth_date=birth_date,
        birth_year=year,
        birth_month=month,
        birth_day=day,
        gender=raw.get("gender"),
        deceased=deceased,
        deceased_datetime=deceased_datetime,
        identifiers=[ref_identifier(i, mrn_system) for i in raw.get("identifier") or ()],
        telecom=[ref_contact_point(t, region) for t in raw.get("telecom") or ()],
        addresses=[ref_address(a) for a in raw.get("address") or ()],
        race=race,
        ethnicity=ethnicity,
        birth_sex=birth_sex,
        languages=[_language(c) for c in raw.get("communication") or ()],
        contacts=list(raw.get("contact") or ()),
        general_practitioner=list(raw.get("generalPractitioner") or ()),
        managing_organization=raw.get("managingOrganization"),
        extensions=others,
        multiple_birth=raw.get("multipleBirthBoolean", raw.get("multipleBirthInteger")),
        modifier_extensions=list(raw.get("modifierExtension") or ()),
        primitive_extensions={k: raw[k] for k in _PRIMITIVE_EXTENSION_KEYS if k in raw},
        links=list(raw.get("link") or ()),
    )


def ref_encounter(raw: dict[str, Any]) -> SourceEncounter:
    meta = raw.get("meta") or {}
    return SourceEncounter(
        resource_id=raw.get("id") or "",
        version_id=meta.get("versionId"),
        last_updated=meta.get("lastUpdated"),
        patient_id=subject_patient_id(raw.get("subject")),
        status=raw.get("status"),
        class_code=(
            Coding(
                system=raw["class"].get("system"),
                code=raw["class"].get("code"),
                display=raw["class"].get("display"),
            )
            if raw.get("class")
            else None
        ),
        types=_concept_codings(raw.get("type")),
        period=_period(raw.get("period")),
        reasons=_concept_codings(raw.get("reasonCode")),
        identifiers=[ref_identifier(i) for i in raw.get("identifier") or ()],
        locations=list(raw.get("location") or ()),
        participants=list(raw.get("participant") or ()),
        service_provider=raw.get("serviceProvider"),
        extensions=list(raw.get("extension") or ()),
        reason_references=list(raw.get("reasonReference") or ()),
    )


def _fixtures(resource_type: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(FIXTURES.glob("*.json")):
        resource = json.loads(path.read_text())
        if resource.get("resourceType") == resource_type:
            found.append(resource)
    return found


def _patient_variants(patient: dict[str, Any]) -> list[dict[str, Any]]:
    """The Patient, and copies with what the generator seldom writes: periods on every
    element that has one, primitive extensions, partial birth dates, a deceased
    dateTime, US Core extensions, communication, links, elements left out."""
    full = copy.deepcopy(patient)
    for key in ("name", "telecom", "address", "identifier"):
        for item in full.get(key) or ():
            item["period"] = dict(PERIOD)
    full["_birthDate"] = {"extension": [EXT]}
    full["_gender"] = {"extension": [EXT]}
    full["deceasedDateTime"] = "2020-01-02T03:04:05Z"
    full["multipleBirthInteger"] = 2
    full["extension"] = [
        {"url": US_CORE_BIRTH_SEX, "valueCode": "F"},
        {"url": US_CORE_RACE, "extension": [{"url": "text", "valueString": "x"}]},
        {"url": US_CORE_ETHNICITY, "extension": [{"url": "text", "valueString": "y"}]},
        EXT,
    ]
    full["communication"] = [
        {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "de"}]}, "preferred": True}
    ]
    full["link"] = [{"other": {"reference": "Patient/x"}, "type": "seealso"}]
    full["managingOrganization"] = {"reference": "Organization/o"}
    partial_year = copy.deepcopy(patient)
    partial_year["birthDate"] = "1970"
    partial_month = copy.deepcopy(patient)
    partial_month["birthDate"] = "1970-03"
    bare = {"resourceType": "Patient", "id": patient.get("id", "bare")}
    return [patient, full, partial_year, partial_month, bare]


@pytest.fixture(scope="module")
def generated() -> Any:
    return generate(120, seed=SEED, encounters_per_patient=2)


def test_patients_equal_the_keyword_construction(generated: Any) -> None:
    patients = [p for items in generated.patients_by_source.values() for p in items]
    checked = 0
    for patient in [*_fixtures("Patient"), *patients]:
        for variant in _patient_variants(patient):
            for mrn_system in (None, "http://ehr-a.example.org/fhir/mrn"):
                for region in ("US", "DE"):
                    got = parse_patient(variant, default_region=region, mrn_system=mrn_system)
                    want = ref_patient(variant, region, mrn_system)
                    assert got == want
                    assert got.to_dict() == want.to_dict()
                    checked += 1
    assert checked > 1000


def test_normalizers_equal_the_keyword_construction(generated: Any) -> None:
    patients = [p for items in generated.patients_by_source.values() for p in items]
    for patient in [*_fixtures("Patient"), *patients]:
        for variant in _patient_variants(patient)[:2]:
            for name in variant.get("name") or ():
                assert normalize_name(name) == ref_name(name)
            for ident in variant.get("identifier") or ():
                assert normalize_identifier(ident) == ref_identifier(ident)
            for point in variant.get("telecom") or ():
                assert normalize_contact_point(point) == ref_contact_point(point)
            for address in variant.get("address") or ():
                assert normalize_address(address) == ref_address(address)


def test_encounters_equal_the_keyword_construction(generated: Any) -> None:
    encounters = [e for items in generated.encounters_by_source.values() for e in items]
    assert encounters
    for encounter in [*_fixtures("Encounter"), *encounters]:
        variants = [encounter]
        full = copy.deepcopy(encounter)
        full["type"] = [{"coding": [{"system": "http://x", "code": "a"}]}, {"text": "walk-in"}]
        full["reasonCode"] = [{"text": "checkup"}]
        full["identifier"] = [
            {"system": "http://ehr.example.org/visit", "value": "v-1", "period": dict(PERIOD)}
        ]
        full["extension"] = [EXT]
        full["serviceProvider"] = {"reference": "Organization/o"}
        variants.append(full)
        bare = {"resourceType": "Encounter", "id": "bare", "status": "finished"}
        bare["class"] = {"code": "AMB"}
        variants.append(bare)
        for variant in variants:
            got = parse_encounter(variant)
            assert got == ref_encounter(variant)
            assert got.to_dict() == ref_encounter(variant).to_dict()
            assert parse_encounter_core(variant) == EncounterCore(
                got.resource_id,
                got.version_id,
                got.last_updated,
                got.patient_id,
                got.status,
                got.class_code,
                got.period,
            )


def test_the_encounter_core_gives_parse_encounters_verdict(generated: Any) -> None:
    valid = generated.encounters_by_source[next(iter(generated.encounters_by_source))][0]
    broken = [
        {**valid, "status": "not-a-status"},
        {**valid, "period": {"start": "yesterday"}},
        {**valid, "subject": ["Patient/1"]},
        {k: v for k, v in valid.items() if k != "class"},
        {**valid, "resourceType": "Patient"},
        {**valid, "type": [{"coding": [{"code": 7}]}]},
    ]
    for raw in broken:
        with pytest.raises(InvalidResource) as full:
            parse_encounter(raw)
        with pytest.raises(InvalidResource) as core:
            parse_encounter_core(raw)
        assert core.value.to_dict() == full.value.to_dict()


def test_birth_parts_memo_stays_bounded_and_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patient_module, "MAX_CACHED_BIRTH_DATES", 5)
    monkeypatch.setattr(patient_module, "_BIRTH_PARTS", {})
    dates = ["1970", "1970-03", "1970-03-14", *(f"19{y:02d}-12-31" for y in range(40))]
    for _ in range(2):
        for value in dates:
            assert patient_module._birth_parts(value) == _birth_parts(value)
            assert len(patient_module._BIRTH_PARTS) <= 5
    assert patient_module._birth_parts(None) == (None, None, None)
    assert patient_module._birth_parts("") == (None, None, None)
