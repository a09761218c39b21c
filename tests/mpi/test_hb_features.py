"""Stored match features (``source_record.match_features``): an exact round trip, and a
version that changes whenever what extraction returns can change."""

from __future__ import annotations

import hashlib
from dataclasses import fields, replace

import pytest

from fhir_mapping import parse_patient
from fhir_mapping.model import Address, ContactPoint, Identifier, PersonName, SourcePatient
from mpi.features import (
    FEATURES_VERSION,
    HASH_PREFIX,
    MatchFeatures,
    NameFeatures,
    decode_features,
    encode_features,
    extract_features,
    features_from_normalized,
)
from tools.ehrgen import generate

HASH = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

#: Records that exercise every part of extraction (several names, a given name holding a
#: space, particles, alternates, a suffix, every identifier kind, an invalid SSN, empty
#: values, partial birth dates, a gender that is not compared).
PINNED_PATIENTS = [
    SourcePatient(
        "a",
        names=[
            PersonName(
                given_folded=["robert", "james"],
                given_canonical=["robert", "james"],
                family_folded="muller ludenscheidt",
                family_alternates=["mueller ludenscheidt", "mullerludenscheidt"],
                family_tokens=["muller", "ludenscheidt"],
                suffix_normalized="jr",
            ),
            PersonName(given_folded=["bob"], given_canonical=["robert"], family_folded="smith"),
        ],
        birth_year=1970,
        birth_month=3,
        birth_day=14,
        gender="male",
        identifiers=[
            Identifier(system="urn:ssn", value_normalized="123456789", kind="ssn"),
            Identifier(system="urn:dl", value_normalized="D1234567", kind="drivers-license"),
            Identifier(system="urn:ehr-a:mrn", value_normalized="MRN001", kind="mrn"),
            Identifier(system="urn:payer", value_normalized="M77", kind="member-id"),
            Identifier(system=None, value_normalized="X1", kind="other"),
            Identifier(system="urn:ssn", value_normalized="000000000", kind="ssn", valid=False),
        ],
        telecom=[
            ContactPoint(system="phone", value_normalized="+14155550123"),
            ContactPoint(system="email", value_normalized="bob@example.org"),
            ContactPoint(system="fax", value_normalized="+14155550199"),
            ContactPoint(system="phone", value_normalized=""),
        ],
        addresses=[
            Address(line_normalized="1 main st apt 2", postal_normalized="94105", city_folded="sf"),
            Address(),
        ],
    ),
    SourcePatient(
        "b",
        names=[
            PersonName(
                given_folded=["mary ann"],
                given_canonical=["mary"],
                family_folded="van der berg",
                family_tokens=["berg"],
            ),
            PersonName(given_folded=["", "ngoc"], family_folded=""),
        ],
        birth_year=1984,
        gender="other",
    ),
    SourcePatient("c", names=[PersonName()], gender="female", birth_year=2001, birth_month=12),
]

#: Per FEATURES_VERSION: a digest of the fields of MatchFeatures and NameFeatures, and the
#: encodings of PINNED_PATIENTS. When this test fails, extraction changed: bump
#: FEATURES_VERSION and add its entry here (never edit an old one); stored features of the
#: old version are then extracted from the normalized JSON again.
PINNED = {
    1: (
        "2ef3d93d3eb0ef78",
        [
            '[1,"0123456789abcdef",[["robert james",null,["robert"],"RBRT",'
            '"muller ludenscheidt",["mueller ludenscheidt","mullerludenscheidt"],null,'
            '"MLR LTNSXTT","jr"],["bob",null,["bob","robert"],"BB","smith",[],null,"SM0",'
            'null]],1970,3,14,"male",["+14155550123"],["bob@example.org"],["123456789"],'
            '[["urn:dl","D1234567"]],[["","X1"],["urn:payer","M77"]],'
            '[["urn:ehr-a:mrn","MRN001"]],[["1 main st apt 2","94105","sf"]]]',
            '[1,"0123456789abcdef",[["mary ann","mary ann",["mary","mary ann"],"MR AN",'
            '"van der berg",[],["berg"],"FN TR BRK",null],["ngoc",null,["ngoc"],"NKK","",[],'
            'null,"",null]],1984,null,null,null,[],[],[],[],[],[],[]]',
            '[1,"0123456789abcdef",[],2001,12,null,"female",[],[],[],[],[],[],[]]',
        ],
    ),
}


def _fields_digest() -> str:
    text = ";".join(
        f"{cls.__name__}.{f.name}:{f.type}"
        for cls in (MatchFeatures, NameFeatures)
        for f in fields(cls)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_the_version_is_bumped_when_extraction_changes() -> None:
    digest, encodings = PINNED[FEATURES_VERSION]
    assert _fields_digest() == digest, "MatchFeatures changed: bump FEATURES_VERSION"
    current = [encode_features(extract_features(p), HASH) for p in PINNED_PATIENTS]
    assert current == encodings, "extraction changed: bump FEATURES_VERSION"


def test_pinned_records_round_trip() -> None:
    for patient in PINNED_PATIENTS:
        features = extract_features(patient)
        assert decode_features(encode_features(features, HASH), HASH) == features


def test_generated_patients_round_trip_exactly() -> None:
    generated = generate(600, seed=23)
    resources = [r for rs in generated.patients_by_source.values() for r in rs]
    assert len(resources) > 1000
    for resource in resources:
        patient = parse_patient(resource)
        features = extract_features(patient)
        text = encode_features(features, HASH)
        assert decode_features(text, HASH) == features
        # What the reader extracted from the stored JSON before: the same features.
        assert features_from_normalized(patient.to_dict()) == features
        assert len(text) < len(str(patient.to_dict())) / 3


def test_a_lone_surrogate_round_trips() -> None:
    # orjson refuses it; the standard encoder escapes it.
    features = replace(extract_features(PINNED_PATIENTS[0]), emails=frozenset({"a\udc80@b.org"}))
    assert decode_features(encode_features(features, HASH), HASH) == features


def test_features_of_another_record_version_are_not_decoded() -> None:
    text = encode_features(extract_features(PINNED_PATIENTS[0]), HASH)
    assert decode_features(text, HASH[:HASH_PREFIX] + "ffff") is not None  # only a prefix
    assert decode_features(text, "f" + HASH[1:]) is None
    assert decode_features(text, None) is None
    assert decode_features(encode_features(extract_features(PINNED_PATIENTS[0])), None)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "not json",
        "{}",
        "[]",
        f'[{FEATURES_VERSION + 1},"0123456789abcdef",[],null,null,null,null,[],[],[],[],[],[],[]]',
        f'[{FEATURES_VERSION},"0123456789abcdef",[],null,null,null,null,[],[],[],[],[],[]]',
        f'[{FEATURES_VERSION},"0123456789abcdef",[["a"]],null,null,null,null,[],[],[],[],[],[],[]]',
        f'[{FEATURES_VERSION},"0123456789abcdef",[],"x",1,1,null,[],[],[],[],[],[],[]]',
        f'[{FEATURES_VERSION},"0123456789abcdef",[],null,null,null,null,[],[],[],[1],[],[],[]]',
    ],
)
def test_unknown_or_malformed_features_are_not_decoded(text: str | None) -> None:
    assert decode_features(text, HASH) is None
