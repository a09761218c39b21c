"""A source's preflight (``connectors.preflight``): what a sync of it would meet, found before
one runs. Fake servers (``httpx.MockTransport``) for each finding; a real one (sekmet-fhir)
for the whole round."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from connectors import SourceConfig, build_source
from connectors.preflight import Preflight, preflight
from tests.connectors.helpers import BASE, Recorder, make_source, outcome
from tests.sekmet_server import SekmetServer

JsonDict = dict[str, Any]
SEARCH_PARAMS = ["_id", "_lastUpdated", "identifier", "patient"]


def statement(
    *,
    version: str = "4.0.1",
    types: tuple[str, ...] = ("Patient", "Encounter"),
    interactions: tuple[str, ...] = ("read", "search-type", "history-type"),
    operations: tuple[str, ...] = ("export",),
) -> JsonDict:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "kind": "instance",
        "fhirVersion": version,
        "software": {"name": "Fake EHR"},
        "rest": [
            {
                "mode": "server",
                "operation": [{"name": o, "definition": f"urn:{o}"} for o in operations],
                "resource": [
                    {
                        "type": t,
                        "interaction": [{"code": c} for c in interactions],
                        "searchParam": [{"name": n, "type": "token"} for n in SEARCH_PARAMS],
                    }
                    for t in types
                ],
            }
        ],
    }


def server(
    capability: JsonDict,
    *,
    honoured: frozenset[str] = frozenset({"_lastUpdated", "_sort", "_count", "_summary"}),
    total: int | None = 42,
    refuse_summary: bool = False,
    status: int | None = None,
) -> Recorder:
    """A fake FHIR server: ``metadata`` answers ``capability``; a search or ``_history``
    answers a Bundle whose ``self`` link keeps only the ``honoured`` parameters."""

    def answer(request: httpx.Request, _n: int) -> httpx.Response:
        if status is not None:
            return httpx.Response(status, json=outcome("no"))
        path = request.url.path
        if path.endswith("/metadata"):
            return httpx.Response(200, json=capability)
        params = list(request.url.params.multi_items())
        if refuse_summary and any(name == "_summary" for name, _ in params):
            return httpx.Response(400, json=outcome("_summary is not supported", "not-supported"))
        kept = [(name, value) for name, value in params if name in honoured]
        bundle: JsonDict = {
            "resourceType": "Bundle",
            "type": "history" if path.endswith("/_history") else "searchset",
            "link": [{"relation": "self", "url": f"{BASE}{path[5:]}?{urlencode(kept)}"}],
        }
        if total is not None:
            bundle["total"] = total
        return httpx.Response(200, json=bundle)

    return Recorder(answer)


def levels(report: Preflight) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for finding in report.findings:
        out.setdefault(finding.subject, []).append((finding.level, finding.message))
    return out


def test_a_standard_fhir_server_passes_and_counts_what_a_first_sync_reads() -> None:
    recorder = server(statement())
    report = preflight(make_source(recorder))
    assert report.ok
    found = levels(report)
    assert found["server"] == [("ok", "answers, and took the credentials (Fake EHR)")]
    assert found["fhirVersion"] == [("ok", "4.0.1")]
    assert found["Patient"] == [("ok", "searchable by _lastUpdated: 42 to read")]
    assert report.counts == {"Patient": 42, "Encounter": 42}
    asked = [str(r.url) for r in recorder.requests]
    assert any("_summary=count" in url and "_lastUpdated=ge1900" in url for url in asked)
    assert any("_sort=_lastUpdated" in url and "_count=1" in url for url in asked)
    assert report.as_dict()["ok"] is True
    assert found["Subscription"] == [
        ("ok", "not offered: changes are pulled (push intake takes Subscriptions made elsewhere)")
    ]


def test_the_subscriptions_a_server_offers_are_reported() -> None:
    classic = preflight(make_source(server(statement(types=("Patient", "Subscription")))))
    assert levels(classic)["Subscription"] == [
        ("ok", "offered (classic R4 criteria; no Subscriptions Backport topic listed)")
    ]
    topics = statement(types=("Patient", "Subscription"))
    topics["rest"][0]["resource"][1]["extension"] = [
        {
            "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
            "capabilitystatement-subscriptiontopic-canonical",
            "valueCanonical": url,
        }
        for url in ("http://ehr.example/topic/b", "http://ehr.example/topic/a")
    ]
    report = preflight(make_source(server(topics)))
    assert levels(report)["Subscription"] == [
        (
            "ok",
            "offered, with 2 Subscriptions Backport topic(s): "
            "http://ehr.example/topic/a, http://ehr.example/topic/b",
        ),
        (
            "ok",
            "subscribe without --topic: Patient by a classic Subscription (no listed topic"
            " pushes its every change); Encounter by a classic Subscription (no listed topic"
            " pushes its every change)",
        ),
    ]


def test_a_server_that_ignores_the_incremental_parameters_is_warned_about() -> None:
    report = preflight(make_source(server(statement(), honoured=frozenset({"_count"}), total=None)))
    assert report.ok  # a sync works, only slower
    patient = levels(report)["Patient"]
    assert patient[0][0] == "warning" and "ignored _lastUpdated" in patient[0][1]
    assert "(the server gives no count)" in patient[0][1]
    assert patient[1][0] == "warning" and "ignored _sort=_lastUpdated" in patient[1][1]
    assert report.counts == {}


def test_a_server_that_refuses_a_count_is_asked_for_one_resource() -> None:
    recorder = server(statement(), refuse_summary=True)
    report = preflight(make_source(recorder))
    assert report.ok
    assert levels(report)["Patient"] == [("ok", "searchable by _lastUpdated: 42 to read")]


@pytest.mark.parametrize(
    ("capability", "subject", "expected"),
    [
        (statement(version="5.0.0"), "fhirVersion", "5.0.0: askonce reads FHIR R4"),
        (statement(types=("Patient",)), "Encounter", "does not offer Encounter"),
    ],
)
def test_what_would_stop_a_sync_is_an_error(
    capability: JsonDict, subject: str, expected: str
) -> None:
    report = preflight(make_source(server(capability)))
    assert not report.ok
    (level, message), *_ = levels(report)[subject]
    assert level == "error" and expected in message


def test_an_unreachable_or_refusing_server_is_one_error_at_once() -> None:
    refused = preflight(make_source(server(statement(), status=401)))
    assert not refused.ok
    assert [f.subject for f in refused.findings] == ["server"]
    assert "credentials were refused" in refused.findings[0].message
    assert "HTTP 401" in refused.findings[0].message
    down = server(statement(), status=503)
    report = preflight(make_source(down, options={"max_attempts": 1}))
    assert not report.ok
    assert (
        "could not be reached, did not answer in time, or is overloaded"
        in report.findings[0].message
    )
    assert len(down.requests) == 1  # one attempt: the preflight does not wait out backoff


def test_history_and_bulk_sources_are_checked_as_they_read() -> None:
    report = preflight(make_source(server(statement()), kind="history"))
    assert report.ok
    assert levels(report)["Patient"] == [("ok", "Patient/_history answers: 42 versions")]
    no_history = statement(interactions=("read", "search-type"))
    report = preflight(make_source(server(no_history), kind="history"))
    assert not report.ok
    assert "does not offer Patient/_history" in levels(report)["Patient"][0][1]

    report = preflight(make_source(server(statement()), kind="bulk"))
    assert report.ok
    assert levels(report)["Patient"] == [("ok", "exported through $export")]
    undeclared = preflight(
        make_source(server(statement()), kind="bulk", options={"bulk_level": "patient"})
    )
    assert undeclared.ok
    (level, message), *_ = levels(undeclared)["Patient"]
    assert level == "warning" and "does not declare Patient/$export" in message


def test_an_ndjson_folder_is_checked_by_its_files(tmp_path: Path) -> None:
    folder = tmp_path / "ehr"
    config = SourceConfig(kind="ndjson", base_url=str(folder))
    missing = preflight(build_source(config))
    assert not missing.ok and "does not exist" in missing.findings[0].message
    folder.mkdir()
    (folder / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "p1"}\n' * 10)
    (folder / "Patient.2.ndjson").write_text('{"resourceType": "Patient", "id": "p2"}\n' * 2000)
    report = preflight(build_source(config))
    assert report.ok
    found = levels(report)
    assert found["Patient"] == [("ok", "2 files, 78.5 KB")]  # 80,400 bytes
    assert found["Encounter"][0][0] == "warning" and "nothing to sync" in found["Encounter"][0][1]


@pytest.mark.sekmet
def test_a_real_fhir_server_passes(sekmet_server: SekmetServer) -> None:
    sekmet_server.seed_patients(2, encounters_per_patient=1)
    config = SourceConfig(kind="fhir", base_url=sekmet_server.base_url)
    report = preflight(build_source(config))
    assert report.ok, report.findings
    found = levels(report)
    assert found["fhirVersion"] == [("ok", "4.0.1")]
    assert found["Patient"][0][0] == "ok" and len(found["Patient"]) == 1  # sorted as asked
    assert report.counts["Patient"] >= 2 and report.counts["Encounter"] >= 2
    # sekmet's Patient topic fires on every change; its Encounter ones on one status each.
    assert found["Subscription"][1] == (
        "ok",
        "subscribe without --topic: Patient by the topic"
        " http://sekmet.dev/fhir/SubscriptionTopic/patient-change; Encounter by a classic"
        " Subscription (no listed topic pushes its every change)",
    )
    history = preflight(build_source(SourceConfig(kind="history", base_url=config.base_url)))
    assert history.ok and levels(history)["Patient"][0][1].startswith("Patient/_history answers")
