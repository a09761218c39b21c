"""The sekmet-fhir fixtures start real, independent servers that can be seeded."""

from __future__ import annotations

import httpx
import pytest

from tests.sekmet_server import SekmetFactory, SekmetServer

pytestmark = pytest.mark.sekmet


def test_seeded_patients_and_encounters_are_searchable(sekmet_server: SekmetServer) -> None:
    patients, encounters = sekmet_server.seed_patients(3, encounters_per_patient=2)
    assert len(patients) == 3
    assert len(encounters) == 6
    family = patients[0]["name"][0]["family"]
    bundle = httpx.get(f"{sekmet_server.base_url}/Patient", params={"family": family}).json()
    assert bundle["total"] == 3
    patient_ids = {p["id"] for p in patients}
    assert {e["subject"]["reference"].split("/")[-1] for e in encounters} == patient_ids


def test_factory_servers_are_independent(
    sekmet_factory: SekmetFactory, sekmet_server: SekmetServer
) -> None:
    other = sekmet_factory()
    assert other.base_url != sekmet_server.base_url
    created = other.create({"resourceType": "Patient", "name": [{"family": "Elsewhere"}]})
    assert other.read("Patient", created["id"])["id"] == created["id"]
    response = httpx.get(f"{sekmet_server.base_url}/Patient/{created['id']}")
    assert response.status_code == 404
