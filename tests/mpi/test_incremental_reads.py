"""The incremental resolver's fast paths decide from exactly the same data as before:
features read straight from the stored JSON, driver-level reads, no cache pollution."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_mapping import InvalidResource, SourcePatient, parse_patient
from mpi import extract_features, resolve_patients
from mpi.blocking import block_keys
from mpi.features import features_from_normalized
from mpi.reads import Reads, decode, decode_for_features
from mpi.storage import _feature_cache, clear_caches
from store.models import BlockKey, GoldenPatient, SourceRecord
from tests.fhir_mapping.test_properties import PROPERTY_SETTINGS, patients
from tests.mpi.helpers import add_record, add_source, fhir_patient
from tools.ehrgen import generate


def _stored(patient: SourcePatient) -> dict[str, Any]:
    """``patient`` as the ``normalized`` column gives it back (JSON, tuples as lists)."""
    return json.loads(json.dumps(patient.to_dict()))


@PROPERTY_SETTINGS
@given(patients())
def test_features_from_stored_json_equal_those_of_the_parsed_record(
    resource: dict[str, Any],
) -> None:
    try:
        patient = parse_patient(resource)
    except InvalidResource:
        return
    assert features_from_normalized(_stored(patient)) == extract_features(patient)


def test_features_from_stored_json_on_generated_people() -> None:
    data = generate(150, seed=11)
    for resources in data.patients_by_source.values():
        for resource in resources:
            patient = parse_patient(resource)
            stored = _stored(patient)
            assert features_from_normalized(stored) == extract_features(patient)
            assert features_from_normalized(stored) == extract_features(
                SourcePatient.from_dict(stored)
            )


def test_missing_keys_take_the_defaults_from_dict_takes() -> None:
    """Rows written by older versions lack some keys: the same defaults as ``from_dict``."""
    patient = parse_patient(fhir_patient("p1", ssn="512-34-6789", email="bob@example.org"))
    stored = _stored(patient)
    for key in ("gender", "birth_day", "telecom"):
        del stored[key]
    for name in stored["names"]:
        del name["family_tokens"], name["given_canonical"]
    for ident in stored["identifiers"]:
        del ident["valid"], ident["kind"]
    for address in stored["addresses"]:
        del address["city_folded"]
    assert features_from_normalized(stored) == extract_features(SourcePatient.from_dict(stored))


def test_block_members_reports_oversized_keys_by_size_only(session: Session) -> None:
    source = add_source(session, "ehr-a")
    items = [
        add_record(session, source, fhir_patient(f"p{i}", given=f"Name{i}", phone=None))
        for i in range(4)
    ]
    resolve_patients(session, items)
    shared = sorted(set.intersection(*(set(block_keys(extract_features(p))) for _, p in items)))
    assert shared  # the family name, birth date, address… keys
    reads = Reads(session)
    rows = reads.block_members(shared, 3)
    assert {(key, size, None) for key, size, _ in rows} == {(key, 4, None) for key in shared}
    rows = reads.block_members(shared, 4)
    members = sorted((key, member) for key, _, member in rows)
    expected = sorted(
        (key, record)
        for key, record in session.execute(
            select(BlockKey.key, BlockKey.source_record_id).where(BlockKey.key.in_(shared))
        )
    )
    assert members == expected
    assert reads.links([row.id for row, _ in items]) and not reads.links([10**9])


def test_reads_see_records_added_but_not_flushed(session: Session) -> None:
    """Driver-level reads flush the session first, as ``Session.execute`` would."""
    source = add_source(session, "ehr-a")
    first = add_record(session, source, fhir_patient("a1", ssn="512-34-6789"))
    resolve_patients(session, [first])
    row = SourceRecord(
        source_id=source.id,
        resource_type="Patient",
        resource_id="late",
        raw={},
        normalized={},
        status="active",
    )
    session.add(row)
    reads = Reads(session)
    assert row.id is not None
    assert reads.links([first[0].id])[0][1] == session.scalar(select(GoldenPatient.id))


def test_a_resolution_leaves_the_feature_cache_alone(session: Session) -> None:
    """Candidates decoded to decide one record are not kept in the process cache (they
    would only age there, and make young garbage collections slow)."""
    source = add_source(session, "ehr-a")
    other = add_source(session, "ehr-b")
    [first] = resolve_patients(session, [add_record(session, source, fhir_patient("a1"))])
    clear_caches()
    [second] = resolve_patients(
        session, [add_record(session, other, fhir_patient("b1", given="Bob"))]
    )
    assert second.golden_id == first.golden_id and not second.created
    assert not _feature_cache
    golden = session.get(GoldenPatient, first.golden_id)
    assert golden is not None
    session.refresh(golden)
    assert ["Robert"] in [n["given"] for n in golden.resource["name"]]


def test_json_read_for_features_gives_the_same_features() -> None:
    data = generate(40, seed=3)
    for resources in data.patients_by_source.values():
        for resource in resources:
            text = json.dumps(parse_patient(resource).to_dict())
            assert decode_for_features(text) == json.loads(text) == decode(text)
            assert features_from_normalized(decode_for_features(text)) == features_from_normalized(
                decode(text)
            )
    # What orjson refuses goes to json.loads; the exact decode keeps big integers.
    nan = decode_for_features('{"b": NaN}')["b"]
    assert nan != nan
    big = '{"a": 123456789012345678901234567890}'
    assert decode(big) == {"a": 123456789012345678901234567890}
    assert decode("null") == {} and decode(None) == {} and decode({"a": 1}) == {"a": 1}
