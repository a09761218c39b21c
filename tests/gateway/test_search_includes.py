"""What a search adds beyond its matches: ``_include``, ``_revinclude`` (and the scopes
they need), ``_total``, and the outcome entry that names the parameters it ignored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from store.golden import GoldenPatientRepository
from store.models import Audit
from tests.gateway.conftest import MRN, fhir_get

Headers = dict[str, str]


def _mode(bundle: dict[str, Any], mode: str) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource'].get('id')}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def _next(bundle: dict[str, Any]) -> str | None:
    return next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)


def test_encounter_subject_is_searched_not_ignored(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    person, other = add_patient(), add_patient()
    mine = add_encounter(person)
    add_encounter(other)
    for query in (f"subject={person}", f"subject=Patient/{person}", f"patient={person}"):
        bundle = fhir_get(client, headers, f"/fhir/Encounter?{query}")
        assert _mode(bundle, "match") == [f"Encounter/{mine}"], query
        assert _mode(bundle, "outcome") == []
    assert fhir_get(client, headers, f"/fhir/Encounter?subject={person}")["link"][0][
        "url"
    ].endswith(f"subject={person}&_count=5")
    fhir_get(client, headers, "/fhir/Encounter?subject=Group/1", status=400)


def test_encounter_patient_chains_a_patient_search(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    """``Encounter?patient.identifier=MRN`` (a portal that knows a person's MRN, not the
    golden id) finds that person's encounters; before, the chained parameter was ignored
    and every encounter came back."""
    person = add_patient(mrn="MRN-CHAIN", family="Chained", email="ch@example.org")
    other = add_patient(mrn="MRN-OTHER", family="Unchained")
    mine = add_encounter(person)
    add_encounter(other)
    for query in (
        f"patient.identifier={MRN}|MRN-CHAIN",
        "subject.identifier=MRN-CHAIN",
        "patient:Patient.family=chained",
        "subject:Patient.email=CH@example.org",
        "patient.identifier=MRN-CHAIN,MRN-NONE&status=finished",
    ):
        bundle = fhir_get(client, headers, f"/fhir/Encounter?{query}")
        assert _mode(bundle, "match") == [f"Encounter/{mine}"], query
        assert _mode(bundle, "outcome") == [], query
    assert _mode(fhir_get(client, headers, "/fhir/Encounter?patient.family=nobody"), "match") == []
    both = fhir_get(client, headers, "/fhir/Encounter?patient.identifier=MRN-CHAIN,MRN-OTHER")
    assert len(_mode(both, "match")) == 2
    chained = fhir_get(client, headers, "/fhir/Encounter?patient:Patient.family=chained")
    assert "patient.family=chained" in chained["link"][0]["url"]
    for bad, expression in (
        ("patient:Group.name=x", "patient:Group.name"),
        ("patient.family:exact=x", "patient.family:exact"),
        ("patient.organization.name=x", "patient.organization.name"),
        ("patient.bogus=x", "bogus"),
        ("patient._count=3", "patient"),
    ):
        outcome = fhir_get(client, headers, f"/fhir/Encounter?{bad}", status=400)
        assert outcome["issue"][0]["expression"] == [expression], bad


def test_patient_has_reverse_chains_an_encounter_search(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    """``Patient?_has:Encounter:patient:…`` (https://hl7.org/fhir/R4/search.html#has): the
    people with an encounter that Encounter search finds (a CRM's "everyone admitted this
    year"). Before, ``_has`` was ignored and everyone came back."""
    inpatient = add_patient(family="Admitted")
    outpatient = add_patient(family="Visited")
    add_patient(family="Never")  # no encounter at all
    add_encounter(
        inpatient, class_code="IMP", status="in-progress", start="2026-02-01T08:00:00Z", end=None
    )
    add_encounter(inpatient, class_code="AMB", start="2023-05-01T08:00:00Z", end=None)
    add_encounter(outpatient, class_code="AMB", start="2026-03-01T08:00:00Z", end=None)

    def found(query: str) -> list[str]:
        bundle = fhir_get(client, headers, f"/fhir/Patient?{query}&_count=50")
        assert _mode(bundle, "outcome") == [], query
        return sorted(_mode(bundle, "match"))

    assert found("_has:Encounter:patient:class=IMP") == [f"Patient/{inpatient}"]
    assert found("_has:Encounter:subject:date=ge2026-01-01") == sorted(
        [f"Patient/{inpatient}", f"Patient/{outpatient}"]
    )
    assert found("_has:Encounter:patient:status=in-progress,planned") == [f"Patient/{inpatient}"]
    assert found("_has:Encounter:patient:status:not=finished") == [f"Patient/{inpatient}"]
    # Two _has criteria are two questions: each may be answered by another encounter.
    assert found("_has:Encounter:patient:class=AMB&_has:Encounter:patient:date=lt2024") == [
        f"Patient/{inpatient}"
    ]
    assert found("_has:Encounter:patient:class=AMB&family=visited") == [f"Patient/{outpatient}"]
    assert found("_has:Encounter:patient:class=EMER") == []
    counted = fhir_get(
        client, headers, "/fhir/Patient?_has:Encounter:patient:class=AMB&_summary=count"
    )
    assert counted["total"] == 2
    paged = fhir_get(client, headers, "/fhir/Patient?_has:Encounter:patient:class=AMB&_count=1")
    assert "_has:Encounter:patient:class=AMB" in unquote(_next(paged) or "")
    second = fhir_get(client, headers, _next(paged) or "")
    assert sorted(_mode(paged, "match") + _mode(second, "match")) == sorted(
        [f"Patient/{inpatient}", f"Patient/{outpatient}"]
    )
    for bad, expression in (
        ("_has:Observation:patient:code=x", "_has:Observation:patient:code"),
        ("_has:Encounter:participant:class=IMP", "_has:Encounter:participant:class"),
        ("_has:Encounter:patient=x", "_has:Encounter:patient"),
        ("_has:Encounter:patient:bogus=x", "bogus"),
        ("_has:Encounter:patient:patient=x", "patient"),
        ("_has:Encounter:patient:patient.family=x", "patient.family"),
        ("_has:Encounter:patient:_has:Encounter:patient:class=x", "_has:Encounter:patient:class"),
        ("_has:Encounter:patient:date=2024-99", "date"),
        ("_has:Encounter:patient:class:exact=x", "class:exact"),
    ):
        outcome = fhir_get(client, headers, f"/fhir/Patient?{bad}", status=400)
        assert outcome["issue"][0]["expression"] == [expression], bad


def test_include_adds_each_pages_patients_once(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
    session_factory: sessionmaker[Session],
) -> None:
    ada, bob, gone = add_patient(family="Ada"), add_patient(family="Bob"), add_patient()
    made = [add_encounter(p) for p in (ada, ada, bob, ada, bob, gone)]
    survivor = add_patient(family="Survivor")
    with session_factory() as session:  # bob merged into survivor; gone deleted
        repo = GoldenPatientRepository(session)
        repo.save(
            repo.read(bob), repo.read(bob).resource, [], status="merged", merged_into=survivor
        )
        repo.save(repo.read(gone), repo.read(gone).resource, [], status="deleted")
        session.commit()
    for value in ("Encounter:subject", "Encounter:patient", "Encounter:subject:Patient"):
        bundle = fhir_get(client, headers, f"/fhir/Encounter?_include={value}&_count=50")
        assert _mode(bundle, "match") == [f"Encounter/{e}" for e in made]
        # Each once, in the order first referred to; a deleted record is left out.
        assert _mode(bundle, "include") == [f"Patient/{ada}", f"Patient/{bob}"], value
        Bundle.model_validate(bundle)
    merged = next(
        e["resource"]
        for e in fhir_get(client, headers, "/fhir/Encounter?_include=Encounter:subject")["entry"]
        if e["resource"]["id"] == bob
    )
    assert merged["active"] is False
    assert merged["link"][0] == {
        "other": {"reference": f"Patient/{survivor}"},
        "type": "replaced-by",
    }
    # Every page carries the Patients of its own encounters, and the next link keeps asking.
    pages, url = [], "/fhir/Encounter?_include=Encounter:subject&_count=2"
    next_url: str | None = url
    while next_url:
        page = fhir_get(client, headers, next_url)
        pages.append((_mode(page, "match"), _mode(page, "include")))
        next_url = _next(page)
        assert next_url is None or "_include=Encounter%3Asubject" in next_url
    assert pages == [
        ([f"Encounter/{made[0]}", f"Encounter/{made[1]}"], [f"Patient/{ada}"]),
        ([f"Encounter/{made[2]}", f"Encounter/{made[3]}"], [f"Patient/{bob}", f"Patient/{ada}"]),
        ([f"Encounter/{made[4]}", f"Encounter/{made[5]}"], [f"Patient/{bob}"]),
    ]
    both = "_include=Encounter:subject&_include=Encounter:patient&_count=50"
    assert _mode(fhir_get(client, headers, f"/fhir/Encounter?{both}"), "include") == [
        f"Patient/{ada}",
        f"Patient/{bob}",
    ]
    for bad in ("Encounter:location", "Patient:link", "*"):
        fhir_get(client, headers, f"/fhir/Encounter?_include={bad}", status=400)
    fhir_get(client, headers, "/fhir/Patient?_include=Encounter:subject", status=400)


def test_includes_need_the_scope_of_the_type_they_add(
    client: TestClient,
    auth_for: Callable[..., Headers],
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    person = add_patient()
    add_encounter(person)
    patients_only = auth_for("system/Patient.rs")
    encounters_only = auth_for("system/Encounter.rs")
    fhir_get(client, patients_only, f"/fhir/Patient?_id={person}")
    for query in ("_revinclude=Encounter:subject", "_revinclude=Encounter:patient:Patient"):
        refused = fhir_get(client, patients_only, f"/fhir/Patient?_id={person}&{query}", status=403)
        assert "system/Encounter.s" in refused["issue"][0]["diagnostics"]
    form = {"_id": person, "_revinclude": "Encounter:subject"}
    reply = client.post("/fhir/Patient/_search", data=form, headers=patients_only)
    assert reply.status_code == 403, reply.text
    fhir_get(client, encounters_only, f"/fhir/Encounter?patient={person}")
    refused = fhir_get(
        client,
        encounters_only,
        f"/fhir/Encounter?patient={person}&_include=Encounter:subject",
        status=403,
    )
    assert "system/Patient.s" in refused["issue"][0]["diagnostics"]
    both = auth_for("system/Patient.rs", "system/Encounter.rs")
    included = fhir_get(
        client, both, f"/fhir/Encounter?patient={person}&_include=Encounter:subject"
    )
    assert _mode(included, "include") == [f"Patient/{person}"]
    # A value no search supports is the search's 400, whatever the scopes.
    fhir_get(client, patients_only, "/fhir/Patient?_revinclude=Observation:subject", status=400)
    # A chain and _has search another type: they need its scope as an include does, or
    # a caller could learn who is named Garcia with Encounter scopes alone.
    for headers, query, needed in (
        (encounters_only, "/fhir/Encounter?patient.family=garcia", "system/Patient.s"),
        (encounters_only, "/fhir/Encounter?subject:Patient.identifier=X", "system/Patient.s"),
        (patients_only, "/fhir/Patient?_has:Encounter:patient:class=IMP", "system/Encounter.s"),
    ):
        refused = fhir_get(client, headers, query, status=403)
        assert needed in refused["issue"][0]["diagnostics"], query
        fhir_get(client, both, query)


def test_total_counts_what_the_search_finds(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
) -> None:
    people = [add_patient(family="Totalson") for _ in range(7)]
    add_patient(family="Other")
    for person in people[:3]:
        add_encounter(person)
    for total in ("accurate", "estimate"):
        bundle = fhir_get(client, headers, f"/fhir/Patient?family=totalson&_total={total}&_count=2")
        assert (bundle["total"], len(_mode(bundle, "match"))) == (7, 2)
        assert f"_total={total}" in bundle["link"][0]["url"]
        # The total stays the search's, not the page's, on every page.
        assert fhir_get(client, headers, str(_next(bundle)))["total"] == 7
    assert "total" not in fhir_get(client, headers, "/fhir/Patient?family=totalson")
    assert "total" not in fhir_get(client, headers, "/fhir/Patient?family=totalson&_total=none")
    encounters = fhir_get(client, headers, "/fhir/Encounter?_total=accurate&_count=1")
    assert (encounters["total"], len(_mode(encounters, "match"))) == (3, 1)
    counted = fhir_get(client, headers, "/fhir/Encounter?_summary=count&_total=none")
    assert counted["total"] == 3
    for url in ("/fhir/Patient?_total=exact", "/fhir/Encounter?_total="):
        outcome = fhir_get(client, headers, url, status=400)
        assert outcome["issue"][0]["expression"] == ["_total"]


def test_ignored_parameters_are_named_in_an_outcome_entry(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    add_encounter: Callable[..., int],
    session_factory: sessionmaker[Session],
) -> None:
    person = add_patient(family="Lenient")
    add_encounter(person)
    bundle = fhir_get(
        client, headers, "/fhir/Patient?family=lenient&general-practitioner=Springfield&x=1"
    )
    assert _mode(bundle, "match") == [f"Patient/{person}"]
    (outcome,) = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    issues = outcome["resource"]["issue"]
    assert [(i["severity"], i["code"], i["expression"]) for i in issues] == [
        ("warning", "not-supported", ["general-practitioner"]),
        ("warning", "not-supported", ["x"]),
    ]
    assert "Springfield" not in str(bundle)  # the value is never echoed: it may be PHI
    Bundle.model_validate(bundle)
    counted = fhir_get(client, headers, "/fhir/Encounter?_summary=count&location=Room-1")
    assert counted["total"] == 1 and _mode(counted, "outcome") == ["OperationOutcome/None"]
    assert _mode(fhir_get(client, headers, "/fhir/Patient?family=lenient"), "outcome") == []
    strict = {**headers, "Prefer": "handling=strict"}
    fhir_get(client, strict, "/fhir/Encounter?location=Room-1", status=400)
    # The audit row of a search with an outcome entry and includes: matches and includes.
    fhir_get(client, headers, f"/fhir/Encounter?patient={person}&x=1&_include=Encounter:subject")
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        row = session.scalars(select(Audit).order_by(Audit.id.desc()).limit(1)).one()
    assert row.detail["included"] == [f"Patient/{person}"] and len(row.detail["ids"]) == 1


@pytest.mark.parametrize("query", ["_revinclude=Encounter:subject", "_total=accurate", "x=1"])
def test_capability_and_bundles_stay_valid(
    client: TestClient, headers: Headers, add_patient: Callable[..., str], query: str
) -> None:
    add_patient()
    Bundle.model_validate(fhir_get(client, headers, f"/fhir/Patient?{query}"))
    capability = fhir_get(client, headers, "/fhir/metadata")
    kinds = {r["type"]: r for r in capability["rest"][0]["resource"]}
    assert "Encounter:subject" in kinds["Encounter"]["searchInclude"]
    assert "Encounter:subject" in kinds["Patient"]["searchRevInclude"]
    assert "subject" in [p["name"] for p in kinds["Encounter"]["searchParam"]]
