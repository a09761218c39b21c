"""Connectors against a real FHIR server we did not write (sekmet-fhir)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from connectors import AuthenticationError, Cursor, Page, Source, SourceConfig, build_source
from connectors.config import SourceKind
from tests.sekmet_server import SekmetFactory, SekmetServer

PATIENTS = 45
PAGE_SIZE = 10  # 45 patients -> 5 pages
#: The test server is local: no client-side rate limit, short bulk polls.
OPTIONS: dict[str, Any] = {"page_size": PAGE_SIZE, "requests_per_s": None, "poll_interval_s": 0.2}

pytestmark = pytest.mark.sekmet


@dataclass
class Seeded:
    server: SekmetServer
    patients: list[dict[str, Any]]
    encounters: list[dict[str, Any]]


@pytest.fixture(scope="module")
def seeded(sekmet_factory: SekmetFactory) -> Seeded:
    """A server of its own (exact counts), with 45 Patients and one Encounter each."""
    server = sekmet_factory()
    patients, encounters = server.seed_patients(PATIENTS, encounters_per_patient=1)
    return Seeded(server, patients, encounters)


def source(server: SekmetServer, kind: SourceKind = "fhir", **options: Any) -> Source:
    config = SourceConfig(kind=kind, base_url=server.base_url, options={**OPTIONS, **options})
    return build_source(config)


def delivered(pages: list[Page]) -> Counter[str]:
    return Counter(r["id"] for page in pages for r in page.resources)


def test_check_reports_types_search_parameters_and_operations(seeded: Seeded) -> None:
    caps = source(seeded.server).check()
    assert caps.fhir_version == "4.0.1"
    assert {"Patient", "Encounter"} <= set(caps.resource_types)
    assert caps.supports_search_param("Patient", "_lastUpdated")
    assert caps.supports_search_param("Encounter", "patient")
    assert caps.supports_operation("export")
    assert caps.supports_operation("export", "Patient")


def test_full_sync_gets_every_resource_exactly_once_over_more_than_three_pages(
    seeded: Seeded,
) -> None:
    pages = list(source(seeded.server).stream("Patient"))
    counts = delivered(pages)
    assert len([p for p in pages if p.resources]) > 3
    assert set(counts) == {p["id"] for p in seeded.patients}
    assert set(counts.values()) == {1}
    encounters = delivered(list(source(seeded.server).stream("Encounter")))
    assert set(encounters) == {e["id"] for e in seeded.encounters}
    assert set(encounters.values()) == {1}


def test_second_sync_after_updating_three_patients_returns_exactly_those(seeded: Seeded) -> None:
    src = source(seeded.server)
    cursor = list(src.stream("Patient"))[-1].cursor
    changed = []
    for record in seeded.patients[10:13]:
        record = {**record, "active": False}
        changed.append(seeded.server.update(record))
    again = list(src.stream("Patient", cursor))
    resources = [r for p in again for r in p.resources]
    assert sorted((r["id"], r["meta"]["versionId"]) for r in resources) == sorted(
        (r["id"], r["meta"]["versionId"]) for r in changed
    )
    assert all(r["active"] is False for r in resources)
    # and a third sync from there finds nothing new
    third = list(src.stream("Patient", again[-1].cursor))
    assert [r for p in third for r in p.resources] == []


def test_patient_scoped_encounters_match_the_type_level_search(seeded: Seeded) -> None:
    pages = list(source(seeded.server, vendor_profile="patient-scoped").stream("Encounter"))
    counts = delivered(pages)
    assert set(counts) == {e["id"] for e in seeded.encounters}
    assert set(counts.values()) == {1}


def test_bulk_export_round_trip(seeded: Seeded) -> None:
    bulk = source(seeded.server, "bulk")
    pages = list(bulk.stream("Patient"))
    assert set(delivered(pages)) == {p["id"] for p in seeded.patients}
    assert set(delivered(pages).values()) == {1}
    assert pages[-1].outcomes == []
    cursor = pages[-1].cursor
    assert cursor is not None and json.loads(cursor)["since"]

    updated = seeded.server.update({**seeded.patients[0], "gender": "other"})
    again = list(bulk.stream("Patient", cursor))
    assert [(r["id"], r["meta"]["versionId"]) for p in again for r in p.resources] == [
        (updated["id"], updated["meta"]["versionId"])
    ]


def test_group_level_export_returns_only_the_members_data(seeded: Seeded) -> None:
    members = seeded.patients[20:22]
    group = seeded.server.create(
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{p['id']}"}} for p in members],
        }
    )
    bulk = source(seeded.server, "bulk", bulk_level="group", group_id=group["id"])
    pages = list(bulk.stream("Encounter"))
    subjects = {r["subject"]["reference"].split("/")[-1] for p in pages for r in p.resources}
    assert subjects == {p["id"] for p in members}


def test_history_source_reports_deletions(sekmet_factory: SekmetFactory) -> None:
    server = sekmet_factory()
    patients, _ = server.seed_patients(4)
    server.delete("Patient", patients[1]["id"])
    pages = list(source(server, "history", page_size=100).stream("Patient"))
    assert set(delivered(pages)) == {p["id"] for i, p in enumerate(patients) if i != 1}
    assert [rid for p in pages for rid in p.deleted] == [patients[1]["id"]]


def _keys() -> dict[str, tuple[str, dict[str, Any]]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    out = {}
    for alg, key, algorithm in (
        ("RS384", rsa_key, RSAAlgorithm),
        ("ES384", ec_key, ECAlgorithm),
    ):
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        jwk.update({"kid": f"{alg.lower()}-key", "alg": alg, "use": "sig"})
        out[alg] = (pem, jwk)
    return out


@pytest.fixture(scope="module")
def smart_server(sekmet_factory: SekmetFactory) -> tuple[SekmetServer, dict[str, Any]]:
    keys = _keys()
    clients = [
        {"client_id": f"askonce-{alg.lower()}", "jwks": {"keys": [jwk]}, "scopes": "system/*.read"}
        for alg, (_, jwk) in keys.items()
    ]
    server = sekmet_factory({"server_auth": {"types": ["smart"], "smart_clients": clients}})
    server.seed_patients(3)
    return server, keys


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_backend_services_against_the_servers_token_endpoint(
    smart_server: tuple[SekmetServer, dict[str, Any]], alg: str
) -> None:
    server, keys = smart_server
    pem, jwk = keys[alg]
    auth = {
        "kind": "smart",
        "client_id": f"askonce-{alg.lower()}",
        "private_key_pem": pem,
        "kid": jwk["kid"],
        "alg": alg,
        "scope": "system/*.read",
    }
    config = SourceConfig(kind="fhir", base_url=server.base_url, auth=auth, options=OPTIONS)
    with build_source(config) as src:
        assert sum(len(p.resources) for p in src.stream("Patient")) == 3
    anonymous = SourceConfig(kind="fhir", base_url=server.base_url, options=OPTIONS)
    with pytest.raises(AuthenticationError), build_source(anonymous) as src:
        list(src.stream("Patient"))


def one_page_at_a_time(src: Source, resource_type: str, cursor: str | None = None) -> list[Page]:
    """Like the sync runner: reopen the stream at the stored cursor after every page."""
    pages: list[Page] = []
    for _ in range(PATIENTS * 2):
        stream = src.stream(resource_type, cursor)
        page = next(stream)
        stream.close()
        pages.append(page)
        assert page.cursor is not None and page.cursor != cursor  # always progress
        if Cursor.decode(page.cursor).resume is None:
            return pages
        cursor = page.cursor
    raise AssertionError("the stream did not finish")


@pytest.mark.parametrize(
    ("kind", "resource_type", "options"),
    [
        ("fhir", "Patient", {}),
        ("fhir", "Patient", {"sort": False}),
        ("fhir", "Encounter", {"vendor_profile": "patient-scoped"}),
        ("bulk", "Patient", {}),
    ],
    ids=["sorted", "unsorted", "patient-scoped", "bulk"],
)
def test_stopping_after_every_page_loses_and_doubles_nothing(
    seeded: Seeded, kind: SourceKind, resource_type: str, options: dict[str, Any]
) -> None:
    pages = one_page_at_a_time(source(seeded.server, kind, **options), resource_type)
    counts = delivered(pages)
    expected = seeded.patients if resource_type == "Patient" else seeded.encounters
    assert set(counts) == {r["id"] for r in expected}
    assert set(counts.values()) == {1}
    assert len(pages) > 3
