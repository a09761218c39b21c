"""The steward console: sign-in, the review queue, decisions, golden records, search."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.auth import TokenService, register_consumer
from gateway.console.routes import CONSOLE_AUDIENCE, COOKIE, SESSION_S
from store import CursorRepository
from store.models import Audit, Consumer, Link, ReviewItem, Source, SourceRecord
from sync import catchup, feed
from sync.subscriptions import subscription_key
from tests.gateway.conftest import SECRET
from tests.gateway.test_mpi_wiring import ADA, MEI, SSN, ingest, person
from tests.sync.helpers import add_source, patient, write_ndjson

EVIL = person("x1", "<script>alert(1)</script>", "Eve", "1970-01-01", "111-22-3333", "4155550000")


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> dict[str, Any]:
    """Three people in two EHRs, a possible match awaiting a steward, a quarantined
    record, and a steward and a reader consumer."""
    with session_factory() as session:
        ada, mei = ingest(session, "ehr-a", [ADA, MEI])
        (evil,) = ingest(session, "ehr-b", [EVIL])
        source = session.scalar(select(Source).where(Source.name == "ehr-b"))
        assert source is not None
        session.add(
            SourceRecord(
                source_id=source.id,
                resource_type="Patient",
                resource_id="broken",
                status="quarantined",
                error={"issues": [{"path": "Patient.birthDate", "reason": "invalid date"}]},
            )
        )
        item = ReviewItem(
            kind="possible-match",
            source_record_id=evil.source_record_id,
            golden_id=ada.golden_id,
            grade="possible",
            score=7.5,
            reason="possible match below the auto-link threshold",
            evidence={
                "score": 7.5,
                "record_id": ada.source_record_id,
                "comparisons": {
                    "name": {"level": "different", "log2_bayes_factor": -4.2},
                    "birth_date": {"level": "exact", "log2_bayes_factor": 9.1},
                },
                "notes": ["phone differs"],
            },
        )
        other = ReviewItem(
            kind="possible-match",
            source_record_id=mei.source_record_id,
            golden_id=ada.golden_id,
            grade="possible",
            score=5.0,
            reason="possible match",
            evidence={},
        )
        session.add_all([item, other])
        steward = register_consumer(session, "steward", "steward", ["askonce.admin"])
        reader = register_consumer(session, "crm", "crm", ["system/Patient.rs"])
        session.commit()
        return {
            "ada": ada,
            "mei": mei,
            "evil": evil,
            "item": item.id,
            "other": other.id,
            "steward": steward,
            "reader": reader,
        }


def sign_in(client: TestClient, creds: Any) -> None:
    response = client.post(
        "/console/login",
        data={"client_id": creds.client_id, "client_secret": creds.client_secret},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match is not None
    return match.group(1)


def test_pages_need_a_steward_session(client: TestClient, world: dict[str, Any]) -> None:
    for path in ("/console", "/console/review", f"/console/review/{world['item']}"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/console/login"
    form = client.get("/console/login")
    assert form.status_code == 200 and "Steward sign-in" in form.text
    assert "default-src 'none'" in form.headers["content-security-policy"]
    assert form.headers["cache-control"] == "no-store"
    wrong = client.post(
        "/console/login", data={"client_id": world["steward"].client_id, "client_secret": "nope"}
    )
    assert wrong.status_code == 401 and "wrong secret" in wrong.text
    reader = client.post(
        "/console/login",
        data={
            "client_id": world["reader"].client_id,
            "client_secret": world["reader"].client_secret,
        },
    )
    assert reader.status_code == 403 and "askonce.admin" in reader.text
    assert COOKIE not in client.cookies


def test_the_session_is_no_api_token_and_the_reverse(
    client: TestClient, world: dict[str, Any]
) -> None:
    sign_in(client, world["steward"])
    session_token = client.cookies[COOKIE]
    api = client.get("/fhir/Patient", headers={"Authorization": f"Bearer {session_token}"})
    assert api.status_code == 401
    client.cookies.clear()
    bearer = TokenService(SECRET).issue(world["steward"].client_id, ["askonce.admin"])
    client.cookies.set(COOKIE, bearer, path="/console")
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_the_dashboard_and_the_queue(client: TestClient, world: dict[str, Any]) -> None:
    sign_in(client, world["steward"])
    home = client.get("/console")
    assert home.status_code == 200
    assert "2</strong> open review items" in home.text
    assert "ehr-a" in home.text and "ehr-b" in home.text
    assert '<span class="who" title="' in home.text and ">steward</span>" in home.text
    queue = client.get("/console/review")
    assert f'href="/console/review/{world["item"]}"' in queue.text
    assert "Oyelaran" in queue.text  # the candidate golden record's name
    assert "<script>" not in queue.text
    # Triage by kind, in the console and in the admin API.
    assert (
        f'href="/console/review/{world["item"]}"'
        in client.get("/console/review?kind=possible-match").text
    )
    assert "Nothing waits for a steward." in client.get("/console/review?kind=vetoed").text
    admin = {"Authorization": f"Bearer {TokenService(SECRET).issue('s', ['askonce.admin'])}"}
    assert client.get("/admin/review?kind=vetoed", headers=admin).json() == []
    assert len(client.get("/admin/review?kind=possible-match", headers=admin).json()) == 2
    assert client.get("/admin/review?kind=maybe", headers=admin).status_code == 400


def test_a_review_item_side_by_side_with_its_evidence(
    client: TestClient, world: dict[str, Any]
) -> None:
    sign_in(client, world["steward"])
    page = client.get(f"/console/review/{world['item']}")
    assert page.status_code == 200
    text = page.text
    # The incoming record, its candidate golden record and the closest linked record.
    assert "Incoming record: ehr-b / x1" in text and "Its closest record: ehr-a / a1" in text
    assert "Adaeze Oyelaran" in text and "1984-06-02" in text
    assert "http://hl7.org/fhir/sid/us-ssn | 512-34-6789" in text
    # Escaped, never run: the page allows no script anyway.
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    # Strongest evidence first, with its sign.
    assert text.index("birth_date") < text.index("<td>name</td>")
    assert "+9.10" in text and "-4.20" in text and "note: phone differs" in text
    assert 'value="match"' in text and 'value="no-match"' in text
    missing = client.get("/console/review/999999")
    assert missing.status_code == 404


def test_a_decision_needs_the_form_token_and_goes_through_the_engine(
    client: TestClient, world: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    sign_in(client, world["steward"])
    url = f"/console/review/{world['item']}/decision"
    forged = client.post(url, data={"decision": "match", "csrf": "0" * 40})
    assert forged.status_code == 403 and "expired" in forged.text
    token = csrf_of(client.get(f"/console/review/{world['item']}").text)
    kept_apart = client.post(
        url,
        data={"decision": "no-match", "csrf": token, "note": "different mothers' maiden names"},
        follow_redirects=False,
    )
    assert kept_apart.status_code == 303
    # On to the next open item.
    assert kept_apart.headers["location"] == (
        f"/console/review/{world['other']}?decided={world['item']}&outcome=no-match"
    )
    assert "decided <strong>no-match</strong>" in client.get(kept_apart.headers["location"]).text
    joined = client.post(
        f"/console/review/{world['other']}/decision",
        data={"decision": "match", "csrf": token},
        follow_redirects=False,
    )
    assert joined.status_code == 303
    # The last open item: back to the queue.
    assert joined.headers["location"].startswith("/console/review?decided=")
    with session_factory() as session:
        item = session.get(ReviewItem, world["item"])
        assert item is not None and item.status == "resolved"
        assert item.resolved_by == world["steward"].client_id
        evil_golden = session.scalar(
            select(Link.golden_id).where(Link.source_record_id == world["evil"].source_record_id)
        )
        mei_golden = session.scalar(
            select(Link.golden_id).where(Link.source_record_id == world["mei"].source_record_id)
        )
    assert evil_golden != world["ada"].golden_id  # kept apart
    assert mei_golden == world["ada"].golden_id  # joined by the steward
    again = client.post(url, data={"decision": "match", "csrf": token})
    assert again.status_code == 409  # already decided
    resolved = client.get("/console/review?status=resolved")
    assert "no-match by" in resolved.text


def test_a_golden_record_with_its_links_and_history(
    client: TestClient, world: dict[str, Any]
) -> None:
    sign_in(client, world["steward"])
    page = client.get(f"/console/golden/{world['ada'].golden_id}")
    assert page.status_code == 200
    assert "Adaeze Oyelaran" in page.text and "Patient/a1" in page.text
    assert client.get("/console/golden/not-a-golden-id").status_code == 404


def test_search_sources_and_quarantine(client: TestClient, world: dict[str, Any]) -> None:
    sign_in(client, world["steward"])
    found = client.get("/console/search", params={"family": "oyelaran"})
    assert "1 found" in found.text and f"/console/golden/{world['ada'].golden_id}" in found.text
    bad = client.get("/console/search", params={"birthdate": "yesterday"})
    assert 'class="error"' in bad.text
    assert "ehr-b" in client.get("/console/sources").text
    quarantine = client.get("/console/quarantine")
    assert "broken" in quarantine.text and "invalid date" in quarantine.text


def test_the_sources_page_shows_each_hl7v2_feeds_last_message(
    client: TestClient, world: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    """A feed has no runs: the page gives its last message and how many it sent."""
    adt = add_source(session_factory, "adt", kind="hl7v2", base_url="mllp://127.0.0.1:2575")
    add_source(session_factory, "adt-quiet", kind="hl7v2", base_url="mllp://127.0.0.1:2576")
    with session_factory() as session:
        for answer in ("AA", "AA", "AE"):
            feed.note_message(session, adt, answer)
        session.commit()
    sign_in(client, world["steward"])
    page = client.get("/console/sources").text
    row = next(r for r in page.split("<tr>") if "<td>adt</td>" in r)
    assert "last message" in row and "3 messages" in row
    assert "accepted 2, quarantined 1, rejected 0" in row
    quiet = next(r for r in page.split("<tr>") if "<td>adt-quiet</td>" in r)
    assert "no message yet" in quiet and "never synced" not in quiet


def test_console_reads_are_audited(
    client: TestClient, world: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    sign_in(client, world["steward"])
    client.get(f"/console/review/{world['item']}")
    client.get(f"/console/golden/{world['ada'].golden_id}")
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        rows = session.scalars(select(Audit).where(Audit.action.like("console-%"))).all()
    actions = {(r.action, r.resource_id) for r in rows}
    assert ("console-review", str(world["item"])) in actions
    assert ("console-golden", world["ada"].golden_id) in actions
    assert all(r.principal == world["steward"].client_id for r in rows)


def test_sign_out_and_renewal(client: TestClient, world: dict[str, Any]) -> None:
    # A session near its end is renewed by the next page.
    near_end = TokenService(SECRET).issue(
        world["steward"].client_id, ["askonce.admin"], audience=CONSOLE_AUDIENCE, lifetime_s=60
    )
    client.cookies.set(COOKIE, near_end, path="/console")
    page = client.get("/console")
    assert page.status_code == 200
    assert f"Max-Age={SESSION_S}" in page.headers["set-cookie"]
    client.cookies.clear()
    sign_in(client, world["steward"])
    token = csrf_of(client.get("/console").text)
    assert client.post("/console/logout", data={"csrf": "bad"}).status_code == 403
    out = client.post("/console/logout", data={"csrf": token}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/console/login"
    assert COOKIE not in client.cookies
    assert client.get("/console/console.css").headers["content-type"].startswith("text/css")


def test_a_record_is_split_off_a_golden_record(
    client: TestClient, world: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        (twin,) = ingest(session, "ehr-c", [{**ADA, "id": "a2"}])
    golden_id = world["ada"].golden_id
    assert twin.golden_id == golden_id  # the same person in another EHR: linked
    sign_in(client, world["steward"])
    page = client.get(f"/console/golden/{golden_id}")
    assert page.text.count("Not this person") == 2
    token = csrf_of(page.text)
    url = f"/console/golden/{golden_id}/split"
    assert (
        client.post(url, data={"record_id": twin.source_record_id, "csrf": "x"}).status_code == 403
    )
    split = client.post(
        url, data={"record_id": twin.source_record_id, "csrf": token}, follow_redirects=False
    )
    assert split.status_code == 303
    with session_factory() as session:
        now = session.scalar(
            select(Link.golden_id).where(Link.source_record_id == twin.source_record_id)
        )
    assert now is not None and now != golden_id
    assert f"golden record {now}" in client.get(split.headers["location"]).text
    # A record that is not linked here, or the last one left, cannot be split off.
    lone = client.post(url, data={"record_id": world["ada"].source_record_id, "csrf": token})
    assert lone.status_code == 409


def test_what_two_people_disagree_on_is_marked() -> None:
    from gateway.console.views import disagreements, person_view

    a = person_view(ADA, "a")
    b = person_view({**ADA, "birthDate": "1984-06-20", "telecom": []}, "b")
    c = person_view({**ADA, "name": [{"family": "OYELARAN", "given": ["adaeze"]}]}, "c")
    assert disagreements(a, b) == {"birth_date"}  # a missing phone is no disagreement
    assert disagreements(a, c) == set()  # case is not a difference
    other_ehr = {"system": "urn:ehr-b:mrn", "value": "B-1"}
    d = person_view({**ADA, "identifier": [other_ehr]}, "d")
    assert disagreements(a, d) == set()  # no system in common: nothing to disagree on
    e = person_view({**ADA, "identifier": [{"system": SSN, "value": "999-99-9999"}]}, "e")
    assert disagreements(a, e) == {"identifiers"}


def test_a_deactivated_steward_is_signed_out_and_renewal_keeps_the_forms(
    client: TestClient, world: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    near_end = TokenService(SECRET).issue(
        world["steward"].client_id, ["askonce.admin"], audience=CONSOLE_AUDIENCE, lifetime_s=60
    )
    client.cookies.set(COOKIE, near_end, domain="testserver.local", path="/console")
    page = client.get(f"/console/review/{world['item']}")
    assert f"Max-Age={SESSION_S}" in page.headers["set-cookie"]  # renewed
    token = csrf_of(page.text)
    decided = client.post(
        f"/console/review/{world['item']}/decision",
        data={"decision": "no-match", "csrf": token},
        follow_redirects=False,
    )
    assert decided.status_code == 303  # the form rendered before the renewal still works
    with session_factory() as session:
        session.execute(
            update(Consumer)
            .where(Consumer.client_id == world["steward"].client_id)
            .values(active=False)
        )
        session.commit()
    gone = client.get("/console", follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"] == "/console/login"


def test_a_steward_checks_a_source_from_the_sources_page(
    client: TestClient,
    world: dict[str, Any],
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient("p1")])
    ready = add_source(session_factory, "ehr-ndjson", base_url=str(folder))
    gone = add_source(session_factory, "ehr-gone", base_url=str(tmp_path / "nowhere"))
    sign_in(client, world["steward"])
    listing = client.get("/console/sources")
    assert f'action="/console/sources/{ready}/check"' in listing.text
    assert 'action="/console/sources/' not in client.get("/console").text  # dashboard: no forms
    csrf = csrf_of(listing.text)
    checked = client.post(f"/console/sources/{ready}/check", data={"csrf": csrf})
    assert checked.status_code == 200
    assert (
        "Check of ehr-ndjson" in checked.text and "Nothing here would stop a sync" in checked.text
    )
    assert "1 file, " in checked.text and "Okafor" not in checked.text
    failed = client.post(f"/console/sources/{gone}/check", data={"csrf": csrf})
    assert "A sync would fail" in failed.text and "does not exist" in failed.text
    assert client.post("/console/sources/99999/check", data={"csrf": csrf}).status_code == 404
    assert client.post(f"/console/sources/{ready}/check", data={"csrf": "0"}).status_code == 403
    # What push intake owes shows too: a catch-up not yet done, the EHR's Subscriptions.
    with session_factory() as session:
        catchup.owe(session, gone)
        CursorRepository(session).set(
            ready,
            subscription_key("sub-9"),
            json.dumps(
                {
                    "id": "sub-9",
                    "what": "Patient?",
                    "created_at": "2026-01-01T00:00:00+00:00",
                    "status": "error",
                    "error": "delivery failed",
                }
            ),
        )
        session.commit()
    pushed = client.get("/console/sources").text
    assert "catch-up owed since" in pushed
    assert 'title="Patient?: delivery failed">error</span>' in pushed
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        actions = session.scalars(
            select(Audit.action).where(Audit.action == "console-source-check")
        )
        assert len(list(actions)) == 3


def test_the_sources_page_says_when_stored_patients_are_read_again(
    client: TestClient, world: dict[str, Any], session_factory: sessionmaker[Session]
) -> None:
    """An upgrade or a new parse option (sync.reparse): the scheduler reads the stored
    Patients again, and the page says so until it is done."""
    from sync.reparse import parsed_with
    from sync.runner import bound_patient_options

    add_source(session_factory, "read-again")
    current = add_source(session_factory, "read-as-now")
    with session_factory() as session:
        source = session.get(Source, current)
        assert source is not None
        source.parsed_with = parsed_with(bound_patient_options(source))
        session.commit()
    sign_in(client, world["steward"])
    rows = client.get("/console/sources").text.split("<tr>")
    assert "reading stored patients again" in next(r for r in rows if "<td>read-again</td>" in r)
    assert "reading stored patients again" not in next(
        r for r in rows if "<td>read-as-now</td>" in r
    )
