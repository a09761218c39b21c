"""save_many keeps each version as the record was written (resource, status, time), also
for more records than one statement copies (the kept versions are copied from the records
by the database, in chunks)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from store import golden as golden_module
from store.golden import GoldenPatientRepository, GoldenWrite
from store.models import GoldenPatient, GoldenPatientVersion

#: More records than one copy statement takes.
_RECORDS = golden_module._IDS_PER_STATEMENT + 7


def _resource(n: int, family: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"family": f"{family}-{n}", "given": ["Änne"]}],
        "birthDate": "1970-03-14",
    }


def _check_versions(session: Session, version: int) -> None:
    records = {
        row.id: row
        for row in session.execute(
            select(
                GoldenPatient.id,
                GoldenPatient.resource,
                GoldenPatient.status,
                GoldenPatient.last_updated,
            ).where(GoldenPatient.version == version)
        )
    }
    kept = session.execute(
        select(
            GoldenPatientVersion.golden_id,
            GoldenPatientVersion.resource,
            GoldenPatientVersion.status,
            GoldenPatientVersion.recorded_at,
        ).where(GoldenPatientVersion.version == version)
    ).all()
    assert len(records) == len(kept) == _RECORDS
    for golden_id, resource, status, recorded_at in kept:
        record = records[golden_id]
        assert resource == record.resource
        assert resource["meta"]["versionId"] == str(version)
        assert (status, recorded_at) == (record.status, record.last_updated)


def test_every_written_record_keeps_its_version(session: Session) -> None:
    repo = GoldenPatientRepository(session)
    ids = [f"g-{n:05d}" for n in range(_RECORDS)]
    repo.save_many(
        [GoldenWrite(g, _resource(n, "Müller"), (), "active", None, 0) for n, g in enumerate(ids)]
    )
    session.commit()
    _check_versions(session, 1)
    writes = [
        GoldenWrite(g, _resource(n, "Okafor"), (), "active", None, 1)
        for n, g in enumerate(ids[1:], 1)
    ]
    writes.append(GoldenWrite(ids[0], _resource(0, "Okafor"), (), "merged", ids[1], 1))
    assert set(repo.save_many(writes).values()) == {2}
    session.commit()
    _check_versions(session, 2)
    old = repo.vread(ids[0], 1)
    assert old.status == "active" and old.resource["name"][0]["family"] == "Müller-0"
    merged = repo.vread(ids[0], 2)
    assert merged.status == "merged" and merged.resource["name"][0]["family"] == "Okafor-0"
