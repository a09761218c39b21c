"""Set-based batch resolution: one batch decides exactly as records resolved one by one."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from fhir_mapping import parse_patient, render_golden_patient, validate_resource
from mpi import MatchModel, MatchSettings, extract_features, resolve_batch, resolve_patients
from mpi import resolve as resolve_module
from mpi.admin import match_patient
from mpi.resolve import LOCK_SLOTS, Resolution, lock_slots
from mpi.survivorship import MemberRecord, build_golden
from store.models import (
    BlockKey,
    GoldenPatient,
    GoldenPatientVersion,
    Link,
    Outbox,
    ReviewItem,
    Source,
    SourceRecord,
)
from tests.conftest import truncate_all
from tests.fhir_mapping.test_properties import PROPERTY_SETTINGS, patients
from tests.mpi.helpers import add_record, add_source, fhir_patient
from tools.ehrgen import generate

GOLDEN_ID = "0f6c2b1e-7d4a-4c3b-9e8f-1a2b3c4d5e6f"
PEOPLE = 200
#: An ehrgen seed whose data holds links, reviews and an automatic merge.
SEED = 5


def _dataset() -> list[tuple[str, dict[str, Any]]]:
    data = generate(PEOPLE, seed=SEED)
    return [(src, r) for src, resources in data.patients_by_source.items() for r in resources]


def _stage(session: Session, data: list[tuple[str, dict[str, Any]]]) -> list[tuple[Any, Any]]:
    sources: dict[str, Source] = {}
    items = []
    for name, resource in data:
        if name not in sources:
            sources[name] = add_source(session, name)
        items.append(add_record(session, sources[name], resource))
    return items


def _outcome(session: Session, resolutions: list[Resolution]) -> dict[str, Any]:
    """What resolution produced, in terms that do not depend on generated ids."""
    resource_of = dict(session.execute(select(SourceRecord.id, SourceRecord.resource_id)).all())
    groups: dict[str, list[str]] = defaultdict(list)
    for record_id, golden_id in session.execute(select(Link.source_record_id, Link.golden_id)):
        groups[golden_id].append(resource_of[record_id])
    reviews = sorted(
        (resource_of[r], kind)
        for r, kind in session.execute(select(ReviewItem.source_record_id, ReviewItem.kind))
    )
    return {
        "clusters": sorted(sorted(g) for g in groups.values()),
        "grades": [(resource_of[r.source_record_id], r.grade, r.created) for r in resolutions],
        "reviews": reviews,
        "merged": session.scalar(
            select(func.count()).select_from(GoldenPatient).where(GoldenPatient.status == "merged")
        ),
    }


@pytest.mark.parametrize("cut", ["records", "block_rows"])
def test_one_batch_decides_like_one_record_at_a_time(
    engine: Engine,
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    cut: str,
) -> None:
    """Passes of 40 records, or passes cut by the block-key members they read."""
    chunk_size = 40
    passes: list[int] = []
    if cut == "block_rows":
        chunk_size = 10_000
        monkeypatch.setattr(resolve_module, "PASS_BLOCK_ROWS", 60)
        monkeypatch.setattr(resolve_module, "MIN_PASS_RECORDS", 10)
        real_passes = resolve_module._passes

        def spy(*args: Any) -> list[Any]:
            cut_passes = real_passes(*args)
            passes.extend(len(p) for p in cut_passes)
            return cut_passes

        monkeypatch.setattr(resolve_module, "_passes", spy)
    data = _dataset()
    model, settings = MatchModel.default(), MatchSettings()
    with session_factory() as session:
        items = _stage(session, data)
        one_by_one = [r for item in items for r in resolve_patients(session, [item], model=model)]
        expected = _outcome(session, one_by_one)
        assert expected["merged"] and expected["reviews"]  # the hard paths are exercised
        versions_one_by_one = session.scalar(select(func.count()).select_from(GoldenPatientVersion))
        session.commit()
    truncate_all(engine)
    with session_factory() as session:
        items = _stage(session, data)
        # Passes are cut by stored block-key members: the second half meets the first's.
        half = len(items) // 2 if cut == "block_rows" else 0
        batch = resolve_patients(session, items[:half], model=model) if half else []
        passes.clear()  # the resolutions above made their own passes
        batch += resolve_patients(session, items[half:], model=model, chunk_size=chunk_size)
        session.commit()
        assert _outcome(session, batch) == expected
        if cut == "block_rows":  # several passes, none under the minimum but the last
            assert len(passes) > 3 and sum(passes) == len(items) - half
            assert min(passes[:-1]) >= 10
        # The same code decides in memory: the same clusters as resolve_batch.
        memory = resolve_batch([extract_features(p) for _, p in items], model, settings)
        ids = [row.resource_id for row, _ in items]
        in_memory = sorted(sorted(ids[i] for i in m) for m in memory.clusters.values())
        assert in_memory == expected["clusters"]
        # A golden record is rendered once per chunk that touched it, not once per record.
        versions = session.scalar(select(func.count()).select_from(GoldenPatientVersion))
        goldens = session.scalar(select(func.count()).select_from(GoldenPatient))
        assert goldens is not None and versions is not None and versions_one_by_one is not None
        assert goldens <= versions < versions_one_by_one
        keys = session.scalar(select(func.count()).select_from(BlockKey))
        assert keys == sum(len(set(_keys(p))) for _, p in items)


def _keys(patient: Any) -> list[str]:
    from mpi.blocking import block_keys

    return block_keys(extract_features(patient))


def test_records_of_one_batch_see_each_other(session: Session) -> None:
    source = add_source(session, "ehr-a")
    other = add_source(session, "ehr-b")
    first = add_record(session, source, fhir_patient("a1", ssn="512-34-6789"))
    second = add_record(session, other, fhir_patient("b1", given="Bob", ssn="512-34-6789"))
    third = add_record(session, other, fhir_patient("b2", given="Maria", family="Lopez"))
    results = resolve_patients(session, [first, second, third])
    session.commit()
    assert [r.created for r in results] == [True, False, True]
    assert results[0].golden_id == results[1].golden_id != results[2].golden_id
    golden = session.get(GoldenPatient, results[0].golden_id)
    assert golden is not None and golden.version == 1  # rendered once for the batch
    names = [n["given"] for n in golden.resource["name"]]
    assert ["Robert"] in names and ["Bob"] in names
    events = session.scalars(
        select(Outbox.event_type).where(Outbox.aggregate_id == results[0].golden_id)
    ).all()
    assert events == ["patient.created", "patient.updated"]
    # A new version of a record of the batch, resolved alone later, refreshes its golden.
    row, _ = second
    [again] = resolve_patients(session, [(row, parse_patient(fhir_patient("b1", given="Bobby")))])
    session.commit()
    assert (again.golden_id, again.created) == (results[0].golden_id, False)
    session.expire_all()
    golden = session.get(GoldenPatient, results[0].golden_id)
    assert golden is not None and golden.version == 2


def test_match_sees_what_resolution_would_see(session: Session) -> None:
    source = add_source(session, "ehr-a")
    [resolved] = resolve_patients(session, [add_record(session, source, fhir_patient("a1"))])
    found = match_patient(session, parse_patient(fhir_patient("q", given="Bob")))
    assert [c.golden_id for c in found] == [resolved.golden_id]
    assert session.scalar(select(func.count()).select_from(Link)) == 1  # wrote nothing new


def test_lock_slots_are_bounded_and_sorted() -> None:
    keys = [f"k:{n:020x}" for n in range(20_000)]
    slots = lock_slots(keys)
    assert slots == sorted(set(slots))
    assert len(slots) <= LOCK_SLOTS
    assert lock_slots(keys[:3]) == lock_slots(list(reversed(keys[:3])))


@PROPERTY_SETTINGS
@given(st.lists(patients(), min_size=1, max_size=3))
def test_golden_of_several_valid_records_renders_valid_without_a_second_check(
    raws: list[dict[str, Any]],
) -> None:
    members = [
        MemberRecord(n, parse_patient(raw), 50 + n, datetime(2020, 1, 1 + n, tzinfo=UTC))
        for n, raw in enumerate(raws)
    ]
    record, _ = build_golden(GOLDEN_ID, members, MatchSettings().survivorship)
    unchecked = render_golden_patient(record, validate=False)
    validate_resource(unchecked, "Patient")
    assert unchecked == render_golden_patient(record)


@pytest.mark.parametrize("seed", [1, 2])
def test_normalized_json_is_the_dataclass_as_dict(seed: int) -> None:
    data = generate(40, seed=seed)
    for resources in data.patients_by_source.values():
        for resource in resources:
            patient = parse_patient(resource)
            assert patient.to_dict() == dataclasses.asdict(patient)
