"""Records of one batch find the batch-mates filed before them under their block keys,
also when the ranking made when the batch was loaded could not know them yet."""

from __future__ import annotations

from fhir_mapping import parse_patient
from mpi import resolve_patients
from tests.mpi.helpers import add_record, add_source, fhir_patient

NEW_LIFE = {
    "given": "Marisol",
    "family": "Zylstra-Okonkwo",
    "birth": "1981-07-02",
    "gender": "female",
    "phone": "(510) 555-0142",
    "line": "77 Harbor Rd",
    "city": "Alameda",
    "postal": "94501",
}


def test_a_batch_mate_filed_earlier_in_the_batch_is_found(session) -> None:
    a, b = add_source(session, "a"), add_source(session, "b")
    records = [
        add_record(session, a, fhir_patient("a-other", given="Lena", family="Brandt")),
        add_record(session, a, fhir_patient("a1")),
        add_record(session, b, fhir_patient("b1")),  # a1's person: shares its keys
    ]
    first, a1, b1 = resolve_patients(session, records)
    assert b1.golden_id == a1.golden_id != first.golden_id
    assert not b1.created


def test_a_refreshed_record_is_found_under_its_new_keys(session) -> None:
    a, b = add_source(session, "a"), add_source(session, "b")
    row, _ = add_record(session, a, fhir_patient("a1"))
    [stored] = resolve_patients(session, [(row, parse_patient(fhir_patient("a1")))])
    # In one batch: a1's new version (every match field changed), then b1, who shares
    # only a1's new keys: the ranking made when the batch was loaded knew a1's old ones.
    changed = parse_patient(fhir_patient("a1", **NEW_LIFE))
    row.normalized = changed.to_dict()
    row.content_hash = "changed"
    session.flush()
    newcomer = add_record(session, b, fhir_patient("b1", **NEW_LIFE))
    refreshed, b1 = resolve_patients(session, [(row, changed), newcomer])
    assert refreshed.golden_id == stored.golden_id
    assert b1.golden_id == stored.golden_id and not b1.created
