"""``Patient/$merge`` and ``Patient/$unmerge``: a steward's merge of two golden records,
its preview, its refusals, its undo; and the same through the console and the admin API.

The people: Ada's two registrations the engine kept apart (ehr-b has no SSN, another
phone and address: name and birth date alone do not link), and Mei, another person.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.operationdefinition import OperationDefinition
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.provenance import Provenance
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.auth import register_consumer
from mpi import MergeRefused, check_merge, likely_duplicates, merge_patients
from mpi.operations import store_decision
from store.models import (
    Audit,
    GoldenPatient,
    Link,
    LinkHistory,
    MatchDecision,
    Outbox,
    ReviewItem,
)
from tests.gateway.test_console import csrf_of, sign_in
from tests.gateway.test_mpi_wiring import ADA, MEI, SSN, ingest

Headers = dict[str, str]
FHIR = {"Content-Type": "application/fhir+json"}
MERGER_SCOPES = ("system/Patient.rus",)
#: Ada again, registered by another EHR: no SSN, another phone and address.
ADA_B = {
    **ADA,
    "id": "b7",
    "identifier": [{"system": "urn:ehr-b:mrn", "value": "B-7731"}],
    "telecom": [{"system": "phone", "value": "(628) 555-0144"}],
    "address": [{"line": ["9 Bay St"], "city": "Alameda", "postalCode": "94501"}],
}


@dataclass
class People:
    ada: str  # ehr-a's Ada
    ada_b: str  # ehr-b's Ada
    mei: str
    records: dict[str, int]


@pytest.fixture
def people(session_factory: sessionmaker[Session]) -> People:
    with session_factory() as session:
        ada, mei = ingest(session, "ehr-a", [ADA, MEI])
        (ada_b,) = ingest(session, "ehr-b", [ADA_B])
    assert len({ada.golden_id, ada_b.golden_id, mei.golden_id}) == 3  # kept apart
    return People(
        ada.golden_id,
        ada_b.golden_id,
        mei.golden_id,
        {
            "ada": ada.source_record_id,
            "ada_b": ada_b.source_record_id,
            "mei": mei.source_record_id,
        },
    )


@pytest.fixture
def merger(auth_for: Callable[..., Headers]) -> Headers:
    return {**auth_for(*MERGER_SCOPES, client_id="registration-desk"), **FHIR}


def ref(golden_id: str) -> dict[str, Any]:
    return {"reference": f"Patient/{golden_id}"}


def body(source: str, target: str, *extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "source-patient", "valueReference": ref(source)},
            {"name": "target-patient", "valueReference": ref(target)},
            *extra,
        ],
    }


PREVIEW = {"name": "preview", "valueBoolean": True}


def out(reply: Any) -> dict[str, Any]:
    """The output Parameters by name (validated as R4 first)."""
    assert reply.status_code == 200, reply.text
    Parameters.model_validate(reply.json())
    return {p["name"]: p["resource"] for p in reply.json()["parameter"]}


def counts(session: Session) -> tuple[int, int, int, int]:
    return (
        session.scalar(select(func.count()).select_from(Outbox)) or 0,
        session.scalar(select(func.count()).select_from(LinkHistory)) or 0,
        session.scalar(select(func.count()).select_from(MatchDecision)) or 0,
        session.scalar(select(func.max(GoldenPatient.version))) or 0,
    )


def golden_of(session: Session, record_id: int) -> str:
    return session.scalars(select(Link.golden_id).where(Link.source_record_id == record_id)).one()


def test_merge_moves_the_records_and_the_source_answers_replaced_by(
    client: TestClient,
    merger: Headers,
    headers: Headers,
    people: People,
    session_factory: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    absolute = {"reference": f"http://testserver/fhir/Patient/{people.ada}"}
    request = body(people.ada_b, people.ada)
    request["parameter"][1]["valueReference"] = absolute
    with caplog.at_level(logging.DEBUG):
        reply = client.post("/fhir/Patient/$merge", json=request, headers=merger)
    result = out(reply)
    assert result["input"] == request
    notes = [i["diagnostics"] for i in result["outcome"]["issue"]]
    assert notes[0] == f"Patient/{people.ada_b} was merged into Patient/{people.ada}."
    assert notes[1].startswith("The engine grades their records certain (best score ")
    assert notes[1].endswith(" on names, birth date and sex alone.")
    survivor = result["result"]
    assert survivor["id"] == people.ada and survivor["meta"]["versionId"] == "2"
    assert {"other": ref(people.ada_b), "type": "replaces"} in survivor["link"]
    systems = {i.get("system") for i in survivor["identifier"]}
    assert {SSN, "urn:ehr-b:mrn"} <= systems  # both records' identifiers survive
    phones = [t["value"] for t in survivor["telecom"]]
    assert len(phones) == 2
    # What the ADA text says must never reach the logs: only ids.
    for secret in ("Oyelaran", "Adaeze", "1984-06-02", "512-34-6789", "555-0144"):
        assert secret not in caplog.text

    merged = client.get(f"/fhir/Patient/{people.ada_b}", headers=headers).json()
    assert merged["active"] is False
    assert merged["link"][0] == {"other": ref(people.ada), "type": "replaced-by"}
    found = client.get(
        "/fhir/Patient", params={"identifier": "urn:ehr-b:mrn|B-7731"}, headers=headers
    )
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [people.ada]

    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        assert golden_of(session, people.records["ada_b"]) == people.ada
        event = session.scalars(select(Outbox).where(Outbox.event_type == "patient.merged")).one()
        assert (event.aggregate_id, event.payload["merged"]) == (people.ada, people.ada_b)
        history = session.scalars(select(LinkHistory).where(LinkHistory.action == "merge")).one()
        assert (history.actor, history.method) == ("registration-desk", "MANUAL")
        assert history.explanation["steward"] == "merge"
        assert history.explanation["grade"] == "certain"
        audit = session.scalars(select(Audit).where(Audit.action == "merge")).one()
        assert (audit.principal, audit.outcome) == ("registration-desk", 200)
        assert audit.detail["ids"] == [people.ada_b, people.ada]
        # The possible-match item the engine had opened for the two is answered.
        item = session.scalars(
            select(ReviewItem).where(ReviewItem.source_record_id == people.records["ada_b"])
        ).one()
        assert (item.status, item.resolution, item.resolved_by) == (
            "resolved",
            "match",
            "registration-desk",
        )
        assert item.evidence["answered_by"] == "merge"


def test_preview_shows_the_result_and_changes_nothing(
    client: TestClient, merger: Headers, people: People, session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        before = counts(session)
    reply = client.post(
        "/fhir/Patient/$merge", json=body(people.ada_b, people.ada, PREVIEW), headers=merger
    )
    result = out(reply)
    notes = [i["diagnostics"] for i in result["outcome"]["issue"]]
    assert notes[0] == f"Patient/{people.ada_b} would be merged into Patient/{people.ada}."
    assert notes[-1] == "Preview only: nothing was changed."
    preview = result["result"]
    assert "versionId" not in preview.get("meta", {})
    assert {"other": ref(people.ada_b), "type": "replaces"} in preview["link"]
    with session_factory() as session:
        assert counts(session) == before
        assert session.get(GoldenPatient, people.ada_b).status == "active"  # type: ignore[union-attr]
        assert golden_of(session, people.records["ada_b"]) == people.ada_b
    # And the real merge gives what the preview showed.
    merged = out(
        client.post("/fhir/Patient/$merge", json=body(people.ada_b, people.ada), headers=merger)
    )
    kept = {k: v for k, v in merged["result"].items() if k != "meta"}
    assert kept == {k: v for k, v in preview.items() if k != "meta"}


def test_patients_named_by_identifiers(client: TestClient, merger: Headers, people: People) -> None:
    request = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "source-patient-identifier",
                "valueIdentifier": {"system": "urn:ehr-b:mrn", "value": "B-7731"},
            },
            {
                "name": "target-patient-identifier",
                "valueIdentifier": {"system": SSN, "value": ADA["identifier"][0]["value"]},
            },
            PREVIEW,
        ],
    }
    result = out(client.post("/fhir/Patient/$merge", json=request, headers=merger))
    assert result["result"]["id"] == people.ada
    # A logical reference (Reference.identifier) is looked up the same way.
    logical = body(people.ada_b, people.ada, PREVIEW)
    logical["parameter"][0]["valueReference"] = {"identifier": {"value": "B-7731"}}
    assert (
        out(client.post("/fhir/Patient/$merge", json=logical, headers=merger))["result"]["id"]
        == people.ada
    )
    # Every identifier named must be held by the one Patient found.
    both = dict(
        request,
        parameter=[
            *request["parameter"][:1],
            request["parameter"][0]
            | {"valueIdentifier": {"system": SSN, "value": MEI["identifier"][0]["value"]}},
            *request["parameter"][1:],
        ],
    )
    reply = client.post("/fhir/Patient/$merge", json=both, headers=merger)
    assert reply.status_code == 422
    assert "No Patient holds the identifiers source-patient-identifier names" in reply.text
    unknown = dict(
        request,
        parameter=[
            {"name": "source-patient-identifier", "valueIdentifier": {"value": "nobody"}},
            *request["parameter"][1:],
        ],
    )
    assert client.post("/fhir/Patient/$merge", json=unknown, headers=merger).status_code == 422


def test_two_people_are_not_merged(
    client: TestClient, merger: Headers, people: People, session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        before = counts(session)
    for extra in ((), (PREVIEW,)):
        reply = client.post(
            "/fhir/Patient/$merge", json=body(people.mei, people.ada, *extra), headers=merger
        )
        assert reply.status_code == 422, reply.text
        issue = reply.json()["issue"][0]
        assert issue["code"] == "business-rule"
        assert "two people" in issue["diagnostics"] and "guards veto it" in issue["diagnostics"]
        assert "certainly-not" in issue["diagnostics"]
        for secret in ("Lindqvist", "Mei", "623-45-7890", "Oyelaran"):
            assert secret not in reply.text
    with session_factory() as session:
        assert counts(session) == before
        check = check_merge(session, people.mei, people.ada)
        assert check.grade == "certainly-not" and check.vetoes and not check.declined


def test_a_stewards_no_match_holds_and_override_replaces_it(
    client: TestClient, merger: Headers, people: People, session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        store_decision(
            session, people.records["ada"], people.records["ada_b"], "no-match", "steward"
        )
        session.commit()
    reply = client.post("/fhir/Patient/$merge", json=body(people.ada_b, people.ada), headers=merger)
    assert reply.status_code == 422
    assert "a data steward decided that records of the two are different people" in reply.text
    with session_factory() as session:
        with pytest.raises(MergeRefused) as refused:
            merge_patients(session, people.ada_b, people.ada, actor="steward")
        assert refused.value.check.declined == ((people.records["ada"], people.records["ada_b"]),)
        merge_patients(
            session,
            people.ada_b,
            people.ada,
            actor="steward",
            override=True,
            note="same phone on file",
        )
        session.commit()
        decision = session.scalars(select(MatchDecision)).one()
        assert (decision.decision, decision.note) == ("match", "same phone on file")
        history = session.scalars(select(LinkHistory).where(LinkHistory.action == "merge")).one()
        assert history.explanation["overridden"] == [
            "a data steward decided that records of the two are different people"
        ]
        assert history.explanation["note"] == "same phone on file"


@pytest.mark.parametrize(
    ("case", "status", "expected"),
    [
        ("same", 422, "a golden record cannot be merged into itself"),
        ("unknown", 422, "is not a Patient of this server"),
        ("merged-source", 422, "was merged into Patient/"),
        ("merged-target", 422, "was merged into Patient/"),
        ("other-server", 422, "must reference a Patient of this server"),
        ("result-patient", 400, "result-patient is not taken"),
        ("delete-source", 400, "delete-source is not supported"),
        ("both-ways", 400, "not both"),
        ("no-target", 400, "target-patient or target-patient-identifier is required"),
        ("unknown-parameter", 400, "takes no parameter 'force'"),
        ("twice", 400, "preview may be given once"),
        ("preview-string", 400, "preview takes valueBoolean"),
        ("not-parameters", 400, "takes a Parameters resource"),
        ("bad-identifier", 400, "takes valueIdentifier with a value"),
    ],
)
def test_malformed_and_inapplicable_requests(
    client: TestClient,
    merger: Headers,
    people: People,
    session_factory: sessionmaker[Session],
    case: str,
    status: int,
    expected: str,
) -> None:
    request = body(people.ada_b, people.ada)
    params = request["parameter"]
    if case == "same":
        request = body(people.ada, people.ada)
    elif case == "unknown":
        request = body("no-such-patient", people.ada)
    elif case in ("merged-source", "merged-target"):
        with session_factory() as session:
            merge_patients(session, people.ada_b, people.ada, actor="steward")
            session.commit()
        request = (
            body(people.ada_b, people.mei)
            if case == "merged-source"
            else body(people.mei, people.ada_b)
        )
    elif case == "other-server":
        params[0]["valueReference"] = {"reference": "https://elsewhere.example/fhir/Patient/1"}
    elif case == "result-patient":
        params.append(
            {"name": "result-patient", "resource": {"resourceType": "Patient", "id": people.ada}}
        )
    elif case == "delete-source":
        params.append({"name": "delete-source", "valueBoolean": True})
    elif case == "both-ways":
        params.append({"name": "source-patient-identifier", "valueIdentifier": {"value": "B-7731"}})
    elif case == "no-target":
        del params[1]
    elif case == "unknown-parameter":
        params.append({"name": "force", "valueBoolean": True})
    elif case == "twice":
        params.extend([PREVIEW, PREVIEW])
    elif case == "preview-string":
        params.append({"name": "preview", "valueString": "true"})
    elif case == "not-parameters":
        request = {"resourceType": "Patient"}
    elif case == "bad-identifier":
        params[0] = {"name": "source-patient-identifier", "valueIdentifier": {"system": SSN}}
    reply = client.post("/fhir/Patient/$merge", json=request, headers=merger)
    assert reply.status_code == status, reply.text
    assert reply.json()["resourceType"] == "OperationOutcome"
    assert expected in reply.text


def test_merge_needs_patient_update(
    client: TestClient, auth_for: Callable[..., Headers], people: People
) -> None:
    for scopes in (("system/Patient.rs",), ("system/Encounter.cruds",)):
        reply = client.post(
            "/fhir/Patient/$merge",
            json=body(people.ada_b, people.ada),
            headers={**auth_for(*scopes), **FHIR},
        )
        assert reply.status_code == 403
        assert reply.json()["resourceType"] == "OperationOutcome"
    assert (
        client.post(
            "/fhir/Patient/$merge", json=body(people.ada_b, people.ada), headers=FHIR
        ).status_code
        == 401
    )
    unmerge = {
        "resourceType": "Parameters",
        "parameter": [{"name": "source-patient", "valueReference": ref(people.ada_b)}],
    }
    reply = client.post(
        "/fhir/Patient/$unmerge", json=unmerge, headers={**auth_for("system/Patient.rs"), **FHIR}
    )
    assert reply.status_code == 403


def test_unmerge_gives_the_records_back_and_keeps_the_two_apart(
    client: TestClient, merger: Headers, people: People, session_factory: sessionmaker[Session]
) -> None:
    out(client.post("/fhir/Patient/$merge", json=body(people.ada_b, people.ada), headers=merger))
    request = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "source-patient", "valueReference": ref(people.ada_b)},
            {"name": "target-patient", "valueReference": ref(people.ada)},
        ],
    }
    with session_factory() as session:
        before = counts(session)
    preview = out(
        client.post(
            "/fhir/Patient/$unmerge",
            json={**request, "parameter": [*request["parameter"], PREVIEW]},
            headers=merger,
        )
    )
    assert preview["result"]["id"] == people.ada_b and preview["result"].get("active") is not False
    with session_factory() as session:
        assert counts(session) == before
    result = out(client.post("/fhir/Patient/$unmerge", json=request, headers=merger))
    restored = result["result"]
    assert restored["id"] == people.ada_b and "link" not in restored
    assert restored["identifier"][0]["value"] == "B-7731"
    note = result["outcome"]["issue"][0]["diagnostics"]
    assert note.startswith(f"Patient/{people.ada_b} got its records back from Patient/{people.ada}")
    with session_factory() as session:
        assert golden_of(session, people.records["ada_b"]) == people.ada_b
        assert golden_of(session, people.records["ada"]) == people.ada
        events = session.scalars(
            select(Outbox.aggregate_id).where(Outbox.event_type == "patient.unmerged")
        ).all()
        assert sorted(events) == sorted([people.ada, people.ada_b])
        assert session.scalars(select(MatchDecision.decision)).all() == ["no-match"]
    # Kept apart: a new merge of the two is now a steward's business, not an API call's.
    again = client.post("/fhir/Patient/$merge", json=body(people.ada_b, people.ada), headers=merger)
    assert again.status_code == 422
    assert "a data steward decided" in again.text
    # Nothing to undo any more, and a target that is not the one it was merged into.
    assert client.post("/fhir/Patient/$unmerge", json=request, headers=merger).status_code == 422
    with session_factory() as session:
        merge_patients(session, people.ada_b, people.ada, actor="steward", override=True)
        session.commit()
    wrong = {
        **request,
        "parameter": [
            request["parameter"][0],
            {"name": "target-patient", "valueReference": ref(people.mei)},
        ],
    }
    reply = client.post("/fhir/Patient/$unmerge", json=wrong, headers=merger)
    assert reply.status_code == 422
    assert f"was merged into Patient/{people.ada}, not Patient/{people.mei}" in reply.text
    # A chain: Ada's merged into Mei's now; the first merge waits for the second's undo.
    with session_factory() as session:
        merge_patients(session, people.ada, people.mei, actor="steward", override=True)
        session.commit()
    reply = client.post("/fhir/Patient/$unmerge", json=request, headers=merger)
    assert reply.status_code == 422
    assert f"unmerge Patient/{people.ada} first" in reply.text
    chain = {
        **request,
        "parameter": [{"name": "source-patient", "valueReference": ref(people.ada)}],
    }
    out(client.post("/fhir/Patient/$unmerge", json=chain, headers=merger))
    out(client.post("/fhir/Patient/$unmerge", json=request, headers=merger))


def _everything(client: TestClient, headers: Headers, golden_id: str) -> list[dict[str, Any]]:
    """Every resource of ``$everything``, one per page (the paging crosses every phase)."""
    url: str | None = f"/fhir/Patient/{golden_id}/$everything?_count=1"
    found = []
    while url:
        page = client.get(url, headers=headers)
        assert page.status_code == 200, page.text
        found.extend(e["resource"] for e in page.json().get("entry", []))
        url = next(
            (link["url"] for link in page.json()["link"] if link["relation"] == "next"), None
        )
    return found


def test_everything_records_each_merge_and_unmerge_as_provenance(
    client: TestClient, merger: Headers, headers: Headers, people: People
) -> None:
    out(client.post("/fhir/Patient/$merge", json=body(people.ada_b, people.ada), headers=merger))
    lifecycle = [
        r
        for r in _everything(client, headers, people.ada)
        if r["resourceType"] == "Provenance" and "activity" in r
    ]
    assert len(lifecycle) == 1
    merge = Provenance.model_validate(lifecycle[0])
    assert [t.reference for t in merge.target] == [
        f"Patient/{people.ada}",
        f"Patient/{people.ada_b}",
    ]
    assert merge.activity.coding[0].code == "merge"
    assert (
        merge.activity.coding[0].system
        == "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
    )
    assert merge.agent[0].who.display == "registration-desk"
    assert merge.agent[0].type.coding[0].code == "author"
    unmerge = {
        "resourceType": "Parameters",
        "parameter": [{"name": "source-patient", "valueReference": ref(people.ada_b)}],
    }
    out(client.post("/fhir/Patient/$unmerge", json=unmerge, headers=merger))
    for golden_id in (people.ada, people.ada_b):
        activities = [
            r["activity"]["coding"][0]["code"]
            for r in _everything(client, headers, golden_id)
            if r["resourceType"] == "Provenance" and "activity" in r
        ]
        assert activities == ["merge", "unmerge"], golden_id
    assert not any("activity" in r for r in _everything(client, headers, people.mei))


def test_the_console_checks_merges_and_undoes_them(
    client: TestClient, people: People, session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        steward = register_consumer(session, "steward", "steward", ["askonce.admin"])
        session.commit()
    sign_in(client, steward)
    page = client.get(f"/console/golden/{people.ada}")
    assert f'action="/console/golden/{people.ada}/merge"' in page.text
    check = client.get(f"/console/golden/{people.ada}/merge", params={"source": people.ada_b})
    assert check.status_code == 200
    assert "graded <strong>certain</strong>, on names, birth date and sex alone" in check.text
    assert "Nothing in their records speaks against the merge." in check.text
    assert 'name="override"' not in check.text
    csrf = csrf_of(check.text)
    done = client.post(
        f"/console/golden/{people.ada}/merge",
        data={"csrf": csrf, "source": people.ada_b, "note": "same person, two EHRs"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/console/golden/{people.ada}?merged={people.ada_b}"
    assert "was merged into this one" in client.get(done.headers["location"]).text
    merged = client.get(f"/console/golden/{people.ada_b}")
    assert "Undo this merge" in merged.text
    undone = client.post(
        f"/console/golden/{people.ada_b}/unmerge", data={"csrf": csrf}, follow_redirects=False
    )
    assert undone.status_code == 303
    assert "got its source records back" in client.get(undone.headers["location"]).text
    # Now kept apart: the check says so, and only an override merges them.
    check = client.get(f"/console/golden/{people.ada}/merge", params={"source": people.ada_b})
    assert "two people" in check.text and 'name="override"' in check.text
    refused = client.post(
        f"/console/golden/{people.ada}/merge", data={"csrf": csrf, "source": people.ada_b}
    )
    assert refused.status_code == 409 and "Merge with override" in refused.text
    forced = client.post(
        f"/console/golden/{people.ada}/merge",
        data={"csrf": csrf, "source": people.ada_b, "override": "yes"},
        follow_redirects=False,
    )
    assert forced.status_code == 303
    # Mei is someone else: guards and score say so on the check page.
    mei = client.get(f"/console/golden/{people.ada}/merge", params={"source": people.mei})
    assert "guards veto it" in mei.text and "certainly-not" in mei.text
    missing = client.get(f"/console/golden/{people.ada}/merge", params={"source": "nobody"})
    assert missing.status_code == 404
    for bad in ("a\x00b", "two words"):
        posted = client.post(
            f"/console/golden/{people.ada}/merge", data={"csrf": csrf, "source": bad}
        )
        assert posted.status_code == 404
    stale = client.post(
        f"/console/golden/{people.ada}/merge", data={"csrf": "0", "source": people.mei}
    )
    assert stale.status_code == 403
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        actions = session.scalars(
            select(Audit.action).where(Audit.action.like("console-%merge%"))
        ).all()
        assert {"console-merge-check", "console-merge", "console-unmerge"} <= set(actions)


def test_the_admin_api_merges_and_unmerges(
    client: TestClient, auth_for: Callable[..., Headers], people: People
) -> None:
    admin = auth_for("askonce.admin", client_id="steward")
    reply = client.post(
        f"/admin/golden/{people.ada}/merge", json={"source_id": people.mei}, headers=admin
    )
    assert reply.status_code == 409 and "two people" in reply.text
    reply = client.post(
        f"/admin/golden/{people.ada}/merge", json={"source_id": people.ada_b}, headers=admin
    )
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "action": "merged",
        "golden_id": people.ada,
        "merged": people.ada_b,
        "grade": "certain",
        "score": reply.json()["score"],
        "overridden": [],
    }
    reply = client.post(f"/admin/golden/{people.ada_b}/unmerge", headers=admin)
    assert reply.json() == {"action": "unmerged", "golden_id": people.ada_b, "other": people.ada}
    assert client.post(f"/admin/golden/{people.ada_b}/unmerge", headers=admin).status_code == 409
    assert client.post("/admin/golden/nobody/unmerge", headers=admin).status_code == 404
    for bad in ("a\x00b", "not an id", ""):
        reply = client.post(
            f"/admin/golden/{people.ada}/merge", json={"source_id": bad}, headers=admin
        )
        assert reply.status_code in (400, 422), reply.text
        assert reply.json()["resourceType"] == "OperationOutcome"
    reader = auth_for("system/Patient.rus")
    assert (
        client.post(
            f"/admin/golden/{people.ada}/merge", json={"source_id": people.ada_b}, headers=reader
        ).status_code
        == 403
    )


#: Ada's look-alike with another SSN, from a third EHR: the SSN guard keeps her apart.
ADA_OTHER_SSN = {
    **ADA,
    "id": "c3",
    "identifier": [{"system": SSN, "value": "734-56-8901"}],
}


def test_likely_duplicates_lead_a_steward_to_the_merge(
    client: TestClient,
    auth_for: Callable[..., Headers],
    people: People,
    session_factory: sessionmaker[Session],
) -> None:
    with session_factory() as session:
        (other,) = ingest(session, "ehr-c", [ADA_OTHER_SSN])
        assert other.golden_id not in (people.ada, people.ada_b)  # kept apart by the guard
        found = likely_duplicates(session, people.ada)
        # ehr-b's Ada: kept apart by the engine (nothing corroborates the names and birth
        # date); ehr-c's look-alike: another SSN says another person; Mei: certainly-not.
        assert [c.source_id for c in found] == [people.ada_b]
        assert (found[0].target_id, found[0].grade, found[0].corroborated) == (
            people.ada,
            "certain",
            False,
        )
        assert check_merge(session, other.golden_id, people.ada).vetoes
        # ehr-b's Ada has no SSN: either SSN holder may be her person.
        assert {c.source_id for c in likely_duplicates(session, people.ada_b)} == {
            people.ada,
            other.golden_id,
        }
        assert likely_duplicates(session, people.mei) == []

    admin = auth_for("askonce.admin", client_id="steward")
    reply = client.get(f"/admin/golden/{people.ada}/duplicates", headers=admin)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "golden_id": people.ada,
        "duplicates": [
            {
                "golden_id": people.ada_b,
                "score": found[0].score,
                "grade": "certain",
                "corroborated": False,
            }
        ],
    }
    assert client.get("/admin/golden/nobody/duplicates", headers=admin).status_code == 404
    for bad in ({"count": 0}, {"count": 21}, {"count": "x"}):
        reply = client.get(f"/admin/golden/{people.ada}/duplicates", params=bad, headers=admin)
        assert reply.status_code == 400 and reply.json()["resourceType"] == "OperationOutcome"
    reader = auth_for("system/Patient.rus")
    assert client.get(f"/admin/golden/{people.ada}/duplicates", headers=reader).status_code == 403

    with session_factory() as session:
        steward = register_consumer(session, "steward", "steward", ["askonce.admin"])
        session.commit()
    sign_in(client, steward)
    page = client.get(f"/console/golden/{people.ada}")
    check_link = f'href="/console/golden/{people.ada}/merge?source={people.ada_b}"'
    assert check_link in page.text
    assert f"/merge?source={other.golden_id}" not in page.text
    assert f"/merge?source={people.mei}" not in page.text
    check = client.get(f"/console/golden/{people.ada}/merge", params={"source": people.ada_b})
    assert check.status_code == 200 and "Nothing in their records speaks against" in check.text

    # A steward says the two are different people: no longer offered.
    with session_factory() as session:
        store_decision(
            session, people.records["ada"], people.records["ada_b"], "no-match", "steward"
        )
        session.commit()
    page = client.get(f"/console/golden/{people.ada}")
    assert check_link not in page.text
    assert "No other golden record looks like this person" in page.text
    assert client.get(f"/admin/golden/{people.ada}/duplicates", headers=admin).json() == {
        "golden_id": people.ada,
        "duplicates": [],
    }
    # A merged record has no duplicates to offer: 409 on the API, no section in the console.
    with session_factory() as session:
        merge_patients(session, people.ada_b, people.ada, actor="steward", override=True)
        session.commit()
    assert client.get(f"/admin/golden/{people.ada_b}/duplicates", headers=admin).status_code == 409
    assert (
        "Merge a duplicate into this record"
        not in client.get(f"/console/golden/{people.ada_b}").text
    )
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        audits = session.scalars(select(Audit).where(Audit.action == "admin-duplicates")).all()
        assert audits[0].detail["ids"] == [people.ada, people.ada_b]


def test_capability_statement_and_the_unmerge_definition(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    operations = {o["name"]: o["definition"] for o in patient["operation"]}
    assert operations["merge"] == "http://hl7.org/fhir/OperationDefinition/Patient-merge"
    assert operations["unmerge"] == "https://askonce.dev/fhir/OperationDefinition/Patient-unmerge"
    reply = client.get("/fhir/OperationDefinition/Patient-unmerge")
    assert reply.status_code == 200
    definition = OperationDefinition.model_validate(reply.json())
    assert definition.url == operations["unmerge"] and definition.code == "unmerge"
    assert client.get("/fhir/OperationDefinition/Patient-merge").status_code == 404
