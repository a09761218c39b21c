"""Golden records written at the driver level (save_many) and bulk keyed updates."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from fhir_mapping.search import search_tokens
from store.bulk import BulkWriter, update_where
from store.db import SQLITE_CACHE_KIB, make_engine
from store.golden import GoldenPatientRepository, GoldenWrite
from store.models import (
    BlockKey,
    GoldenPatient,
    GoldenPatientVersion,
    GoldenSearchToken,
    Source,
    SourceRecord,
)

ANNA = {
    "resourceType": "Patient",
    "name": [{"family": "Müller", "given": ["Anna"]}],
    "birthDate": "1970-03-14",
    "gender": "female",
    "identifier": [{"system": "urn:mrn:a", "value": "123"}],
}
BEN = {"resourceType": "Patient", "name": [{"family": "Okafor", "given": ["Ben"]}]}


def _write(golden_id: str, resource: dict, version: int, **kw: object) -> GoldenWrite:
    return GoldenWrite(
        golden_id,
        resource,
        search_tokens(resource),
        str(kw.get("status", "active")),
        kw.get("merged_into"),  # type: ignore[arg-type]
        version,
    )


def _tokens(session: Session, golden_id: str) -> list[tuple[str, str | None, str]]:
    rows = session.execute(
        select(GoldenSearchToken.param, GoldenSearchToken.system, GoldenSearchToken.value).where(
            GoldenSearchToken.golden_id == golden_id
        )
    )
    return sorted((p, s, v) for p, s, v in rows)


def test_save_many_inserts_updates_keeps_versions_and_replaces_tokens(session: Session) -> None:
    repo = GoldenPatientRepository(session)
    assert repo.save_many([_write("g-anna", ANNA, 0), _write("g-ben", BEN, 0)]) == {
        "g-anna": 1,
        "g-ben": 1,
    }
    session.commit()
    anna = repo.read("g-anna")
    assert anna.version == 1
    assert anna.resource["name"] == ANNA["name"]
    assert anna.resource["meta"]["versionId"] == "1"
    assert (anna.birth_date, anna.gender, anna.status, anna.merged_into) == (
        "1970-03-14",
        "female",
        "active",
        None,
    )
    assert isinstance(anna.last_updated, datetime) and anna.last_updated.tzinfo is not None
    assert anna.created_at is not None
    before = _tokens(session, "g-anna")
    assert before == sorted(search_tokens(ANNA)) and before

    renamed = {**ANNA, "name": [{"family": "Schmidt", "given": ["Anna"]}]}
    assert repo.save_many([_write("g-anna", renamed, 1)]) == {"g-anna": 2}
    session.commit()
    session.expire_all()
    anna = repo.read("g-anna")
    assert anna.version == 2
    assert anna.resource["name"][0]["family"] == "Schmidt"
    assert anna.resource["meta"]["versionId"] == "2"
    assert [v.version for v in repo.history("g-anna")] == [2, 1]
    assert repo.vread("g-anna", 1).resource["name"][0]["family"] == "Müller"
    assert repo.vread("g-anna", 2).resource == anna.resource
    after = _tokens(session, "g-anna")
    assert after != before
    assert after == sorted(search_tokens(renamed))
    # The other record was not touched.
    assert repo.read("g-ben").version == 1
    assert len(_tokens(session, "g-ben")) == len(search_tokens(BEN))


def test_save_many_merge_sets_merged_into_and_a_later_write_keeps_it(session: Session) -> None:
    repo = GoldenPatientRepository(session)
    repo.save_many([_write("g-1", ANNA, 0), _write("g-2", ANNA, 0)])
    session.commit()
    golden = repo.read("g-2")  # in the identity map: save_many expires it
    repo.save_many([_write("g-2", ANNA, 1, status="merged", merged_into="g-1")])
    assert (golden.status, golden.merged_into, golden.version) == ("merged", "g-1", 2)
    repo.save_many([_write("g-2", ANNA, 2, status="merged")])  # merged_into None: kept
    session.commit()
    session.expire_all()
    golden = repo.read("g-2")
    assert (golden.status, golden.merged_into, golden.version) == ("merged", "g-1", 3)
    versions = session.scalars(
        select(GoldenPatientVersion.status)
        .where(GoldenPatientVersion.golden_id == "g-2")
        .order_by(GoldenPatientVersion.version)
    ).all()
    assert versions == ["active", "merged", "merged"]


def test_save_many_new_record_merged_into_another_new_one(session: Session) -> None:
    """Inserted in one statement: the survivor goes first (foreign key)."""
    repo = GoldenPatientRepository(session)
    repo.save_many(
        [
            _write("g-loser", ANNA, 0, status="merged", merged_into="g-winner"),
            _write("g-winner", ANNA, 0),
        ]
    )
    session.commit()
    assert repo.read("g-loser").merged_into == "g-winner"
    assert session.get(GoldenPatient, "g-winner") is not None


def test_update_where_updates_only_the_matching_rows(session: Session) -> None:
    source = Source(name="ehr", kind="ndjson", base_url="/x")
    session.add(source)
    session.flush()
    records = [
        SourceRecord(source_id=source.id, resource_type="Patient", resource_id=f"p{i}")
        for i in range(3)
    ]
    session.add_all(records)
    session.flush()
    session.add_all(
        [BlockKey(key=f"k{i}", source_record_id=r.id) for i, r in enumerate(records)]
        + [BlockKey(key="shared", source_record_id=r.id) for r in records]
    )
    session.flush()
    bulk = BulkWriter(session)
    update_where(
        bulk,
        "block_key",
        ("key",),
        ("source_record_id", "key"),
        [("k0-new", records[0].id, "k0"), ("k2-new", records[2].id, "k2"), ("none", -1, "k1")],
    )
    update_where(bulk, "block_key", ("key",), ("source_record_id", "key"), [])
    session.commit()
    rows = session.execute(
        select(BlockKey.source_record_id, BlockKey.key).order_by(
            BlockKey.source_record_id, BlockKey.key
        )
    ).all()
    ids = [r.id for r in records]
    assert [tuple(row) for row in rows] == sorted(
        [
            (ids[0], "k0-new"),
            (ids[0], "shared"),
            (ids[1], "k1"),
            (ids[1], "shared"),
            (ids[2], "k2-new"),
            (ids[2], "shared"),
        ]
    )


def test_sqlite_connections_get_the_bigger_page_cache(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA cache_size")).scalar() == -SQLITE_CACHE_KIB
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()
