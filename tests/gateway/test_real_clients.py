"""Clients we did not write (fhirpy, fhirclient) against the gateway served by uvicorn."""

from __future__ import annotations

from typing import Any

import pytest
from fhirclient import client as fhirclient_client
from fhirclient.models.patient import Patient as FCPatient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome

from gateway.auth import TokenService
from tests.gateway.conftest import LIVE_PATIENTS, MRN, SECRET, LiveGateway, live_person

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _match_body(i: int) -> dict[str, Any]:
    """The i-th seeded person as another EHR would send it (its own id)."""
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": {**live_person(i), "id": "elsewhere"}},
            {"name": "onlyCertainMatches", "valueBoolean": True},
        ],
    }


def test_fhirpy_search_paging_read_match_everything(live_gateway: LiveGateway) -> None:
    fhir = SyncFHIRClient(f"{live_gateway.base}/fhir", authorization=f"Bearer {live_gateway.token}")
    found = fhir.resources("Patient").search(family="live").limit(5).fetch_all()
    assert len(found) == LIVE_PATIENTS
    assert {p.id for p in found} == set(live_gateway.golden_ids)
    one = fhir.resources("Patient").search(identifier=f"{MRN}|LIVE-7").fetch()
    assert [p.id for p in one] == [live_gateway.golden_ids[7]]
    patient = fhir.reference("Patient", live_gateway.golden_ids[3]).to_resource()
    assert patient["name"][0]["given"] == live_person(3)["name"][0]["given"]
    encounters = fhir.resources("Encounter").search(patient=live_gateway.everything_id).fetch_all()
    assert sorted(int(e.id) for e in encounters) == live_gateway.encounter_ids
    matched = fhir.execute("Patient/$match", method="post", data=_match_body(5))
    assert [e["resource"]["id"] for e in matched["entry"]] == [live_gateway.golden_ids[5]]
    assert matched["entry"][0]["search"]["extension"][0]["valueCode"] == "certain"
    everything = fhir.execute(
        f"Patient/{live_gateway.everything_id}/$everything", method="get", params={"_count": 2}
    )
    types = [e["resource"]["resourceType"] for e in everything["entry"]]
    assert types == ["Patient", "Encounter"]
    assert any(link["relation"] == "next" for link in everything["link"])


def test_fhirpy_merge_preview_and_its_refusal(live_gateway: LiveGateway) -> None:
    """``$merge`` through fhirpy: two of the seeded people are two people (their SSNs
    conflict), and the refusal is an OperationOutcome fhirpy reads as one."""
    token = TokenService(SECRET).issue("registration-desk", ["system/Patient.rus"])
    fhir = SyncFHIRClient(f"{live_gateway.base}/fhir", authorization=f"Bearer {token}")
    source, target = live_gateway.golden_ids[1], live_gateway.golden_ids[2]
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "source-patient", "valueReference": {"reference": f"Patient/{source}"}},
            {
                "name": "target-patient-identifier",
                "valueIdentifier": {"system": MRN, "value": "LIVE-2"},
            },
            {"name": "preview", "valueBoolean": True},
        ],
    }
    with pytest.raises(OperationOutcome) as refused:
        fhir.execute("Patient/$merge", method="post", data=body)
    issue = refused.value.resource["issue"][0]
    assert issue["code"] == "business-rule" and "two people" in issue["diagnostics"]
    assert fhir.reference("Patient", source).to_resource()["id"] == source  # unchanged
    assert "link" not in fhir.reference("Patient", target).to_resource()


def test_fhirclient_search_paging_read_match_everything(live_gateway: LiveGateway) -> None:
    smart = fhirclient_client.FHIRClient(
        settings={"app_id": "askonce-tests", "api_base": f"{live_gateway.base}/fhir/"}
    )
    smart.server.session.headers["Authorization"] = f"Bearer {live_gateway.token}"
    statement = smart.server.capabilityStatement  # parsed by fhirclient's own R4 models
    assert statement.fhirVersion == "4.0.1"
    search = FCPatient.where(struct={"family": "live", "_count": "4"})
    pages = list(search.perform_iter(smart.server))
    assert len(pages) == (LIVE_PATIENTS + 3) // 4
    ids = [entry.resource.id for page in pages for entry in page.entry or []]
    assert sorted(ids) == sorted(live_gateway.golden_ids)
    patient = FCPatient.read(live_gateway.golden_ids[2], smart.server)
    assert patient.name[0].family == "Live"
    assert patient.birthDate.isostring == live_person(2)["birthDate"]
    matched = smart.server.post_json("Patient/$match", _match_body(9)).json()
    assert [e["resource"]["id"] for e in matched["entry"]] == [live_gateway.golden_ids[9]]
    everything = smart.server.request_json(f"Patient/{live_gateway.everything_id}/$everything")
    kinds = [e["resource"]["resourceType"] for e in everything["entry"]]
    assert kinds[:4] == ["Patient", "Encounter", "Encounter", "Encounter"]
    # mpi's survivorship recorded where each field came from: one Provenance per source record.
    assert kinds[4:] == ["Provenance"]
    from fhirclient.models.provenance import Provenance

    provenance = Provenance(everything["entry"][4]["resource"])  # fhirclient's own validation
    assert provenance.target[0].reference == f"Patient/{live_gateway.everything_id}"
