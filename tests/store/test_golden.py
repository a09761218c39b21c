from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_mapping.search import search_tokens
from store import NotFoundError
from store.golden import GoldenPatientRepository, VersionConflictError
from store.models import GoldenSearchToken

PATIENT = {
    "resourceType": "Patient",
    "name": [{"family": "Müller", "given": ["Anna"]}],
    "birthDate": "1970-03-14",
    "gender": "female",
    "telecom": [{"system": "phone", "value": "(415) 555-0123"}],
    "identifier": [{"system": "urn:mrn:a", "value": "123"}],
}


def test_versions_history_and_search_tokens(session: Session) -> None:
    repo = GoldenPatientRepository(session)
    golden = repo.create(PATIENT, search_tokens(PATIENT))
    session.commit()
    assert golden.resource["meta"]["versionId"] == "1"
    assert golden.birth_date == "1970-03-14"

    updated = {**PATIENT, "name": [{"family": "Schmidt", "given": ["Anna"]}]}
    repo.save(repo.read(golden.id), updated, search_tokens(updated), if_match=1)
    session.commit()
    assert [v.version for v in repo.history(golden.id)] == [2, 1]
    assert repo.vread(golden.id, 1).resource["name"][0]["family"] == "Müller"
    families = session.scalars(
        select(GoldenSearchToken.value).where(
            GoldenSearchToken.golden_id == golden.id, GoldenSearchToken.param == "family"
        )
    ).all()
    assert families == ["schmidt"]

    with pytest.raises(VersionConflictError):
        repo.save(repo.read(golden.id), updated, [], if_match=1)
    with pytest.raises(NotFoundError):
        repo.vread(golden.id, 9)
