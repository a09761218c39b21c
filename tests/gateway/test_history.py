"""``_history`` of golden Patients: the type-level history a consumer follows changes
with, and deletions as FHIR history entries (https://hl7.org/fhir/R4/http.html#history)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fhir_mapping import search_tokens
from store.golden import GoldenPatientRepository
from store.models import Audit
from tests.gateway.conftest import fhir_get, patient_resource, set_recorded

Headers = dict[str, str]
Factory = sessionmaker[Session]


def _next(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


def _walk(client: TestClient, headers: Headers, url: str) -> list[dict[str, Any]]:
    """Every entry of a history, page after page."""
    entries: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url is not None:
        bundle = fhir_get(client, headers, next_url)
        assert bundle["type"] == "history"
        entries.extend(bundle.get("entry", []))
        next_url = _next(bundle)
    return entries


def _key(entry: dict[str, Any]) -> tuple[str, str]:
    """(id, etag) of an entry."""
    return entry["fullUrl"].rsplit("/", 1)[1], entry["response"]["etag"]


def _update(factory: Factory, golden_id: str, family: str, status: str | None = None) -> None:
    with factory() as session:
        repo = GoldenPatientRepository(session)
        resource = patient_resource(family=family)
        repo.save(repo.read(golden_id), resource, search_tokens(resource), status=status)
        session.commit()


def test_type_history_lists_every_version_newest_first_with_deletions(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    session_factory: Factory,
) -> None:
    first, second, third = add_patient(family="One"), add_patient(family="Two"), add_patient()
    _update(session_factory, first, "One-Updated")
    _update(session_factory, third, "Three", status="deleted")
    set_recorded(
        session_factory,
        {
            (first, 1): "2025-01-01T00:00:00",
            (second, 1): "2025-01-02T00:00:00",
            (third, 1): "2025-01-03T00:00:00",
            (first, 2): "2025-01-04T00:00:00",
            (third, 2): "2025-01-05T00:00:00",
        },
    )
    entries = _walk(client, headers, "/fhir/Patient/_history?_count=2")
    assert [_key(e) for e in entries] == [
        (third, 'W/"2"'),
        (first, 'W/"2"'),
        (third, 'W/"1"'),
        (second, 'W/"1"'),
        (first, 'W/"1"'),
    ]
    deletion, update_, created = entries[0], entries[1], entries[4]
    assert "resource" not in deletion
    assert deletion["request"] == {"method": "DELETE", "url": f"Patient/{third}"}
    assert deletion["response"]["lastModified"] == "2025-01-05T00:00:00.000Z"
    assert update_["request"] == {"method": "PUT", "url": f"Patient/{first}"}
    assert update_["resource"]["name"][0]["family"] == "One-Updated"
    assert update_["response"]["status"] == "200 OK"
    assert created["request"] == {"method": "POST", "url": "Patient"}
    assert created["response"]["status"] == "201 Created"
    assert created["resource"]["name"][0]["family"] == "One"
    assert created["fullUrl"] == f"http://testserver/fhir/Patient/{first}"

    since = _walk(client, headers, "/fhir/Patient/_history?_since=2025-01-03T00:00:00Z&_count=1")
    assert [_key(e) for e in since] == [(third, 'W/"2"'), (first, 'W/"2"'), (third, 'W/"1"')]
    assert _walk(client, headers, "/fhir/Patient/_history?_since=2999-01-01") == []

    # The instance history shows the same deletion the same way.
    own = _walk(client, headers, f"/fhir/Patient/{third}/_history")
    assert [e["request"]["method"] for e in own] == ["DELETE", "POST"]
    assert own[1]["request"]["url"] == "Patient"


def test_history_counts_and_cuts_down_as_summary_and_elements_ask(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    session_factory: Factory,
) -> None:
    """``_summary=count`` is a cheap "how many changes since"; ``_summary`` and
    ``_elements`` cut each version down, as on a search. Before, both were ignored and
    every version came back whole."""
    first, second = add_patient(family="One"), add_patient(family="Two")
    _update(session_factory, first, "One-Updated")
    _update(session_factory, second, "Two", status="deleted")
    set_recorded(
        session_factory,
        {
            (first, 1): "2025-01-01T00:00:00",
            (second, 1): "2025-01-02T00:00:00",
            (first, 2): "2025-01-03T00:00:00",
            (second, 2): "2025-01-04T00:00:00",
        },
    )
    counted = fhir_get(client, headers, "/fhir/Patient/_history?_summary=count")
    assert counted["total"] == 4 and "entry" not in counted and counted["type"] == "history"
    assert "_summary=count" in counted["link"][0]["url"]
    since = fhir_get(
        client, headers, "/fhir/Patient/_history?_summary=count&_since=2025-01-02T12:00:00Z"
    )
    assert since["total"] == 2
    own = fhir_get(client, headers, f"/fhir/Patient/{first}/_history?_summary=count")
    assert own["total"] == 2 and "entry" not in own
    cut = _walk(client, headers, "/fhir/Patient/_history?_elements=birthDate&_count=1")
    assert [e["request"]["method"] for e in cut] == ["DELETE", "PUT", "POST", "POST"]
    for entry in cut[1:]:
        resource = entry["resource"]
        assert "birthDate" in resource and "name" not in resource and "identifier" not in resource
        assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"
    summary = _walk(client, headers, f"/fhir/Patient/{first}/_history?_summary=true")
    assert [e["resource"]["name"][0]["family"] for e in summary] == ["One-Updated", "One"]
    assert all(e["resource"]["meta"]["tag"][0]["code"] == "SUBSETTED" for e in summary)
    fhir_get(client, headers, "/fhir/Patient/_history?_summary=bogus", status=400)
    fhir_get(client, headers, "/fhir/Patient/_history?_summary=true&_elements=name", status=400)


def test_type_history_pages_are_exact_when_versions_share_a_time_and_new_ones_arrive(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    session_factory: Factory,
) -> None:
    """One write's records share their time: the cursor still gives each version once.
    A version written while a client pages comes before its first page, not in a later
    one, so nothing is doubled or skipped."""
    ids = [add_patient(family=f"Tie{i}") for i in range(5)]
    set_recorded(session_factory, {(golden_id, 1): "2025-03-01T08:00:00" for golden_id in ids})
    page = fhir_get(client, headers, "/fhir/Patient/_history?_count=2")
    seen = [_key(e) for e in page["entry"]]
    _update(session_factory, ids[0], "Tie0-Later")  # newer than every listed version
    seen += [_key(e) for e in _walk(client, headers, _next(page) or "")]
    assert sorted(seen) == sorted((golden_id, 'W/"1"') for golden_id in ids)
    assert len(set(seen)) == 5
    newest = fhir_get(client, headers, "/fhir/Patient/_history?_count=1")["entry"]
    assert [_key(e) for e in newest] == [(ids[0], 'W/"2"')]


def test_following_changes_since_the_bundles_time_misses_no_late_commit(
    client: TestClient,
    headers: Headers,
    add_patient: Callable[..., str],
    session_factory: Factory,
) -> None:
    """A client polls the history, then asks again with _since the Bundle's
    meta.lastUpdated. A version stamped before that poll and committed after it (a long
    sync transaction) is in the first answer or the next one, never in neither."""
    golden_id = add_patient(family="Before")
    add_patient(family="Other")
    writer = session_factory()
    repo = GoldenPatientRepository(writer)
    resource = patient_resource(family="Late")
    repo.save(repo.read(golden_id), resource, search_tokens(resource))
    writer.flush()  # written and stamped, not committed
    # It commits a moment later (on SQLite the poll waits for it: one writer at a time).
    committer = threading.Timer(0.5, writer.commit)
    committer.start()
    try:
        first = fhir_get(client, headers, "/fhir/Patient/_history?_count=1")
    finally:
        committer.join()
        writer.close()
    as_of = first["meta"]["lastUpdated"]
    entries = [*first.get("entry", [])]
    next_url = _next(first)
    while next_url is not None:  # every page gives the first page's instant
        bundle = fhir_get(client, headers, next_url)
        assert bundle["meta"]["lastUpdated"] == as_of
        entries.extend(bundle.get("entry", []))
        next_url = _next(bundle)
    entries += _walk(client, headers, f"/fhir/Patient/_history?_since={as_of}")
    assert (golden_id, 'W/"2"') in {_key(e) for e in entries}


def test_type_history_needs_the_search_scope_and_is_audited(
    client: TestClient,
    headers: Headers,
    auth_for: Callable[..., Headers],
    add_patient: Callable[..., str],
    session_factory: Factory,
) -> None:
    golden_id = add_patient()
    read_only = auth_for("system/Patient.r")
    refused = fhir_get(client, read_only, "/fhir/Patient/_history", status=403)
    assert refused["resourceType"] == "OperationOutcome"
    fhir_get(client, headers, "/fhir/Patient/_history")
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        row = session.scalars(
            select(Audit).where(Audit.action == "history").order_by(Audit.id.desc())
        ).first()
    assert row is not None and row.resource_id is None
    assert row.detail["ids"] == [golden_id]


def test_history_refuses_what_it_does_not_support(
    client: TestClient, headers: Headers, add_patient: Callable[..., str]
) -> None:
    golden_id = add_patient()
    for url in ("/fhir/Patient/_history", f"/fhir/Patient/{golden_id}/_history"):
        for query, param in (
            ("_at=2025", "_at"),
            ("_list=x", "_list"),
            ("_since=ge2025", "_since"),
            ("_since=soon", "_since"),
            ("_cursor=bogus", "_cursor"),
        ):
            outcome = fhir_get(client, headers, f"{url}?{query}", status=400)
            assert outcome["issue"][0]["expression"] == [param], (url, query)
