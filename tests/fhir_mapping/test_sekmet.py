"""Parse the Patients and Encounters that sekmet-fhir (an independent EHR simulator we
did not write) generates with its own ADT workflows and serves over FHIR R4."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from fhir_mapping import parse_encounter, parse_patient, render_golden_patient
from fhir_mapping.render import golden_record_from_patient
from tests.sekmet_server import SekmetServer, sekmet_executable

pytestmark = pytest.mark.sekmet

#: Patients sekmet registers; it admits every second one (one Encounter each).
SEEDED_PATIENTS = 6
SEED_TIMEOUT_S = 120
MAX_PAGES = 20


def read_all(server: SekmetServer, resource_type: str) -> list[dict[str, Any]]:
    """Every resource of a type, following ``Bundle.link[next]`` (bounded)."""
    resources: list[dict[str, Any]] = []
    url: str | None = f"{server.base_url}/{resource_type}?_count=50"
    for _ in range(MAX_PAGES):
        if url is None:
            break
        bundle = server.client.get(url).raise_for_status().json()
        resources += [e["resource"] for e in bundle.get("entry", []) if "resource" in e]
        url = next(
            (link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None
        )
    return resources


@pytest.fixture(scope="module")
def seeded(sekmet_factory: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A private sekmet server filled by sekmet's own ``seed`` command (its Faker-based
    ADT workflows: register, admit), then read back over FHIR."""
    server: SekmetServer = sekmet_factory()
    env = {
        **os.environ,
        "SEKMET_CONFIG": str(server.workdir / "settings.yaml"),
        "SEKMET_DB": str(server.workdir / "sekmet.db"),
        "SEKMET_BASE_URL": server.base_url,
    }
    subprocess.run(
        [str(sekmet_executable()), "seed", "--count", str(SEEDED_PATIENTS)],
        cwd=server.workdir,
        env=env,
        check=True,
        capture_output=True,
        timeout=SEED_TIMEOUT_S,
    )
    return read_all(server, "Patient"), read_all(server, "Encounter")


def test_every_sekmet_patient_parses_with_its_match_features(seeded: Any) -> None:
    patients, _ = seeded
    assert len(patients) >= SEEDED_PATIENTS
    for raw in patients:
        patient = parse_patient(raw)
        assert patient.resource_id == raw["id"]
        assert patient.version_id == raw["meta"]["versionId"]
        assert patient.names and patient.names[0].family_folded
        assert patient.birth_year is not None
        phones = [t for t in patient.telecom if t.system == "phone"]
        assert all(t.value_normalized.startswith("+") for t in phones)
        assert any(i.kind == "mrn" for i in patient.identifiers)


def test_sekmet_patients_render_back_as_valid_fhir(seeded: Any) -> None:
    patients, _ = seeded
    for raw in patients:
        patient = parse_patient(raw)
        rendered = render_golden_patient(
            golden_record_from_patient(patient, "1b7f3c8e-5d2a-4e61-9f0b-2c4d6e8a0b1c"), version=1
        )
        assert {i["value"] for i in rendered["identifier"]} == {
            i["value"] for i in raw["identifier"]
        }


def test_every_sekmet_encounter_parses_with_its_patient(seeded: Any) -> None:
    patients, encounters = seeded
    assert encounters
    patient_ids = {p["id"] for p in patients}
    for raw in encounters:
        encounter = parse_encounter(raw)
        assert encounter.patient_id in patient_ids
        assert encounter.status == raw["status"]
        assert encounter.class_code is not None
