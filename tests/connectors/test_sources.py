"""Sources against fake servers: request shapes, cursors, history, Bulk Data and NDJSON."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from connectors import (
    BulkExportError,
    Cursor,
    CursorTracker,
    FhirHttp,
    RateLimiter,
    RestSource,
    SourceConfig,
    SourceOptions,
    build_source,
)
from connectors.cursor import parse_instant
from tests.connectors.helpers import BASE, Recorder, make_source, outcome, patient, searchset

T0 = "2026-03-01T10:00:00Z"
T1 = "2026-03-01T10:00:30Z"
T2 = "2026-03-01T10:05:00Z"


def test_search_asks_for_changes_since_the_cursor_sorted_and_paged() -> None:
    handler = Recorder(lambda request, n: httpx.Response(200, json=searchset([])))
    source = make_source(handler, options={"page_size": 50})
    cursor = Cursor(since=parse_instant(T0)).encode()
    list(source.stream("Patient", cursor))
    params = list(handler.requests[0].url.params.multi_items())
    assert params == [
        ("_lastUpdated", "ge2026-03-01T10:00:00.000Z"),
        ("_count", "50"),
        ("_sort", "_lastUpdated"),
    ]
    list(make_source(handler, options={"sort": False}).stream("Patient"))
    assert list(handler.requests[1].url.params.multi_items()) == [("_count", "2")]


def test_cursor_is_newest_last_updated_minus_overlap_and_rereads_are_not_delivered() -> None:
    first_run = [patient("a", stamp=T0), patient("b", stamp=T1), patient("c", stamp=T2)]
    handler = Recorder(lambda request, n: httpx.Response(200, json=searchset(first_run)))
    source = make_source(handler, options={"overlap_s": 60, "page_size": 10})
    pages = list(source.stream("Patient"))
    cursor = Cursor.decode(pages[-1].cursor)
    assert cursor.since_param == "2026-03-01T10:04:00.000Z"
    assert set(cursor.seen) == {"Patient/c/1"}  # only keys inside the overlap window

    # the server re-sends c (inside the overlap) and a new version of c plus d
    second_run = [patient("c", stamp=T2), patient("c", "2", T2), patient("d", stamp=T2)]
    handler.answer = lambda request, n: httpx.Response(200, json=searchset(second_run))
    again = list(source.stream("Patient", pages[-1].cursor))
    assert [(r["id"], r["meta"]["versionId"]) for p in again for r in p.resources] == [
        ("c", "2"),
        ("d", "1"),
    ]
    assert Cursor.decode(again[-1].cursor).encode() == again[-1].cursor  # round-trips


def test_cursor_never_moves_backwards_and_accepts_a_bare_instant() -> None:
    start = Cursor.decode("2026-03-01T10:10:00Z")
    tracker = CursorTracker(start, overlap_s=60)
    assert tracker.admit_resource(patient("old", stamp=T0))
    assert tracker.final().since == start.since
    assert not tracker.admit_resource(patient("old", stamp=T0))
    with pytest.raises(ValueError):
        Cursor.decode("yesterday")


def test_a_crowded_overlap_window_narrows_instead_of_growing_the_cursor() -> None:
    tracker = CursorTracker(Cursor(), overlap_s=3600, max_keys=2)
    for rid, stamp in (("a", T0), ("b", T1), ("c", T2)):
        assert tracker.admit_resource(patient(rid, stamp=stamp))
    cursor = tracker.final()
    assert set(cursor.seen) == {"Patient/b/1", "Patient/c/1"}
    assert cursor.since == parse_instant(T1)  # b and c are still de-duplicated; a is older


def test_unsorted_search_resumes_by_skipping_what_the_pass_delivered() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if "p2" not in str(request.url):
            return httpx.Response(200, json=searchset([patient("b", stamp=T2)], f"{BASE}/p2"))
        return httpx.Response(200, json=searchset([patient("a", stamp=T0)]))

    source = make_source(Recorder(answer), options={"sort": False})
    pages = list(source.stream("Patient"))
    assert [[r["id"] for r in p.resources] for p in pages] == [["b"], ["a"]]
    assert Cursor.decode(pages[0].cursor).since is None  # the pass start is kept mid-pass
    assert Cursor.decode(pages[1].cursor).since == parse_instant("2026-03-01T10:04:00Z")
    # a caller that stopped after page 1 resumes from its cursor: only "a" is new
    resumed = list(source.stream("Patient", pages[0].cursor))
    assert [[r["id"] for r in p.resources] for p in resumed] == [["a"]]
    assert resumed[-1].cursor == pages[-1].cursor


def test_sorted_search_resumes_at_the_position_of_any_page() -> None:
    stamps = ["2026-03-01T10:00:00Z", "2026-03-01T10:00:01Z", "2026-03-01T10:00:01Z"]
    records = [patient(f"p{i}", stamp=s) for i, s in enumerate(stamps)] + [
        patient("p3", stamp="2026-03-01T10:00:02Z")
    ]

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        since = (
            request.url.params["_lastUpdated"][2:] if "_lastUpdated" in request.url.params else ""
        )
        matching = [r for r in records if r["meta"]["lastUpdated"].replace("Z", ".000Z") >= since]
        offset = int(request.url.params.get("_offset", "0"))
        chunk = matching[offset : offset + 2]
        more = (
            f"{BASE}/Patient?_lastUpdated=ge{since}&_offset={offset + 2}"
            if offset + 2 < len(matching)
            else None
        )
        return httpx.Response(200, json=searchset(chunk, more))

    handler = Recorder(answer)
    source = make_source(handler, options={"page_size": 2})
    # a caller that stops after every page and reopens the stream at the stored cursor
    cursor, delivered = None, []
    for _ in range(10):
        page = next(iter(source.stream("Patient", cursor)))
        delivered += [r["id"] for r in page.resources]
        if Cursor.decode(page.cursor).resume is None:
            break
        cursor = page.cursor
    assert delivered == ["p0", "p1", "p2", "p3"]
    resumed_at = [
        r.url.params.get("_lastUpdated") for r in handler.requests if "_offset" not in r.url.params
    ]
    assert resumed_at[1] == "ge2026-03-01T10:00:01.000Z"


def test_a_server_ignoring_sort_falls_back_to_key_resumption() -> None:
    records = [patient("late", stamp=T2), patient("early", stamp=T0)]

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if "p2" in str(request.url):
            return httpx.Response(200, json=searchset([patient("last", stamp=T1)]))
        return httpx.Response(200, json=searchset(records, f"{BASE}/p2"))

    pages = list(make_source(Recorder(answer)).stream("Patient"))
    resume = Cursor.decode(pages[0].cursor).resume
    assert resume is not None and resume.get("unsorted") is True
    assert set(resume["delivered"]) == {"Patient/late/1", "Patient/early/1"}


def test_search_error_outcomes_are_surfaced_and_includes_dropped() -> None:
    bundle = searchset([patient("a")])
    bundle["entry"].append({"resource": patient("x"), "search": {"mode": "include"}})
    bundle["entry"].append({"resource": outcome("partial results"), "search": {"mode": "outcome"}})
    warning = outcome("_sort ignored")
    warning["issue"][0]["severity"] = "warning"
    bundle["entry"].append({"resource": warning, "search": {"mode": "outcome"}})
    handler = Recorder(lambda request, n: httpx.Response(200, json=bundle))
    (page,) = list(make_source(handler).stream("Patient"))
    assert [r["id"] for r in page.resources] == ["a"]
    # errors are surfaced (the caller keeps them); warnings are not records
    assert [o["issue"][0]["diagnostics"] for o in page.outcomes] == ["partial results"]


def test_malformed_resources_inside_a_page_pass_through_raw() -> None:
    broken = {"resourceType": "Patient", "id": "bad", "birthDate": 12345}
    no_id = {"resourceType": "Patient", "name": "not-a-list"}
    handler = Recorder(lambda request, n: httpx.Response(200, json=searchset([broken, no_id])))
    (page,) = list(make_source(handler).stream("Patient"))
    assert page.resources == [broken, no_id]


def test_patient_scoped_encounters_search_each_patient() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path == "/fhir/Patient":
            return httpx.Response(200, json=searchset([patient("p1"), patient("p2")]))
        pid = request.url.params["patient"]
        encounter = {
            "resourceType": "Encounter",
            "id": f"e-{pid}",
            "meta": {"versionId": "1", "lastUpdated": T1},
            "subject": {"reference": f"Patient/{pid}"},
        }
        return httpx.Response(200, json=searchset([encounter]))

    handler = Recorder(answer)
    source = make_source(handler, options={"vendor_profile": "patient-scoped"})
    pages = list(source.stream("Encounter"))
    assert [r["id"] for p in pages for r in p.resources] == ["e-p1", "e-p2"]
    assert [r.url.params.get("patient") for r in handler.requests[1:]] == ["p1", "p2"]
    assert all(r.url.path == "/fhir/Encounter" for r in handler.requests[1:])
    assert Cursor.decode(pages[-1].cursor).since is not None


def test_rate_limit_spaces_requests_evenly() -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4.0, sleep=sleep, clock=lambda: now[0])
    for _ in range(5):
        limiter.acquire()
    assert sleeps == [0.25, 0.25, 0.25, 0.25]


def test_a_sources_rate_limit_outlives_its_chunk() -> None:
    """Each chunk of a sync builds its source again: the rate limit is the process's per
    base URL and rate, so a chunk's first request waits for the last chunk's spacing."""
    options = SourceOptions.from_dict({"requests_per_s": 2.0})
    first = FhirHttp(BASE, options)
    second = FhirHttp(BASE, options)  # the next chunk
    assert first.limiter is second.limiter
    first.limiter.acquire()
    # The next request may start half a second after the last one, whichever chunk asks.
    assert second.limiter._next - time.monotonic() > 0.4
    faster = FhirHttp(BASE, SourceOptions.from_dict({"requests_per_s": 5.0}))
    elsewhere = FhirHttp("https://other.example/fhir", options)
    unlimited = FhirHttp(BASE, SourceOptions.from_dict({"requests_per_s": None}))
    assert len({id(h.limiter) for h in (first, faster, elsewhere, unlimited)}) == 4
    for http in (first, second, faster, elsewhere, unlimited):
        http.close()


def test_source_rate_limit_applies_to_every_request() -> None:
    sleeps: list[float] = []  # recorded, not slept: the limiter's schedule shows in them
    handler = Recorder(lambda request, n: httpx.Response(200, json=searchset([])))
    source = make_source(handler, sleeps=sleeps, options={"requests_per_s": 2.0})
    for _ in range(3):
        list(source.stream("Patient"))
    assert len(handler.requests) == 3
    assert sleeps == [pytest.approx(0.5, abs=0.1), pytest.approx(1.0, abs=0.1)]


def history_bundle() -> dict:
    deleted_entry = {
        "fullUrl": f"{BASE}/Patient/gone",
        "request": {"method": "DELETE", "url": "Patient/gone"},
        "response": {"status": "204", "etag": 'W/"3"', "lastModified": T2},
    }
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            deleted_entry,
            {"resource": patient("a", "2", T1), "request": {"method": "PUT", "url": "Patient/a"}},
            {"resource": patient("a", "1", T0), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": patient("gone", "2", T0),
                "request": {"method": "PUT", "url": "Patient/gone"},
            },
        ],
    }


def entry_stamp(entry: dict) -> datetime:
    stamp = entry["resource"]["meta"]["lastUpdated"] if "resource" in entry else None
    parsed = parse_instant(stamp or entry["response"]["lastModified"])
    assert parsed is not None
    return parsed


def test_history_delivers_newest_versions_and_deletions() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        since = parse_instant(request.url.params["_since"])
        bundle = history_bundle()
        bundle["entry"] = [e for e in bundle["entry"] if entry_stamp(e) >= since]
        return httpx.Response(200, json=bundle)

    handler = Recorder(answer)
    source = make_source(handler, kind="history", options={"page_size": 100})
    (page,) = list(source.stream("Patient", "2026-03-01T09:00:00Z"))
    assert [(r["id"], r["meta"]["versionId"]) for r in page.resources] == [("a", "2")]
    assert page.deleted == ["gone"]
    request = handler.requests[0]
    assert request.url.path == "/fhir/Patient/_history"
    assert request.url.params["_since"] == "2026-03-01T09:00:00.000Z"
    # a re-read of the same history delivers nothing twice
    (again,) = list(source.stream("Patient", page.cursor))
    assert again.resources == [] and again.deleted == []


class FakeBulkServer:
    """Just enough of the Bulk Data export protocol for the client."""

    status_url = f"{BASE}/bulk-status/job1"

    def __init__(self, polls_before_done: int = 2, requires_token: bool = True) -> None:
        self.polls_before_done = polls_before_done
        self.requires_token = requires_token
        self.polls = 0
        self.deleted = False
        self.honour_range = True
        self.handler = Recorder(self.answer)

    def answer(self, request: httpx.Request, n: int) -> httpx.Response:
        url = str(request.url)
        if "$export" in request.url.path:
            return httpx.Response(202, headers={"Content-Location": self.status_url})
        if url == self.status_url and request.method == "DELETE":
            self.deleted = True
            return httpx.Response(202)
        if url == self.status_url:
            self.polls += 1
            if self.polls <= self.polls_before_done:
                headers = {"X-Progress": f"{self.polls * 40}% done", "Retry-After": "3"}
                return httpx.Response(202, headers=headers)
            return httpx.Response(200, json=self.manifest())
        if url.endswith("Patient.ndjson"):
            lines = [json.dumps(patient(f"p{i}")) for i in range(5)] + ["", "{broken"]
            body = "\n".join(lines).encode()
            ranged = request.headers.get("Range", "")
            if ranged.startswith("bytes=") and self.honour_range:
                start = int(ranged[len("bytes=") :].rstrip("-"))
                return httpx.Response(206, content=body[start:])
            return httpx.Response(200, content=body)
        if url.endswith("errors.ndjson"):
            return httpx.Response(200, content=json.dumps(outcome("Observation denied")).encode())
        if url.endswith("deleted.ndjson"):
            bundle = {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"request": {"method": "DELETE", "url": "Patient/old1"}}],
            }
            return httpx.Response(200, content=json.dumps(bundle).encode())
        return httpx.Response(404)

    def manifest(self) -> dict:
        files = "https://files.example/job1"
        return {
            "transactionTime": "2026-03-01T12:00:00Z",
            "request": f"{BASE}/$export",
            "requiresAccessToken": self.requires_token,
            "output": [{"type": "Patient", "url": f"{files}/Patient.ndjson"}],
            "error": [{"type": "OperationOutcome", "url": f"{files}/errors.ndjson"}],
            "deleted": [{"type": "Bundle", "url": f"{files}/deleted.ndjson"}],
        }


def test_bulk_export_round_trip_against_the_protocol() -> None:
    server, sleeps = FakeBulkServer(), []
    source = make_source(
        server.handler, kind="bulk", sleeps=sleeps, auth={"kind": "bearer", "token": "tok"}
    )
    pages = list(source.stream("Patient", "2026-02-01T00:00:00Z"))
    kickoff = server.handler.requests[0]
    assert kickoff.url.path == "/fhir/$export"
    assert kickoff.headers["Prefer"] == "respond-async"
    assert kickoff.url.params["_type"] == "Patient"
    assert kickoff.url.params["_since"] == "2026-02-01T00:00:00.000Z"
    assert sleeps == [3.0, 3.0]  # Retry-After honoured on every 202
    assert [r["id"] for p in pages for r in p.resources] == [f"p{i}" for i in range(5)]
    outcomes = [o["issue"][0]["diagnostics"] for p in pages for o in p.outcomes]
    assert outcomes == ["Patient.ndjson line 7: not valid JSON", "Observation denied"]
    assert pages[-1].deleted == ["old1"]
    assert Cursor.decode(pages[-1].cursor).since_param == "2026-03-01T12:00:00.000Z"
    assert server.deleted
    downloads = [r for r in server.handler.requests if r.url.host == "files.example"]
    assert all(r.headers["Authorization"] == "Bearer tok" for r in downloads)


@pytest.mark.parametrize("honour_range", [True, False], ids=["range", "no-range"])
def test_bulk_resumes_the_same_job_after_any_page(honour_range: bool) -> None:
    server = FakeBulkServer(polls_before_done=0)
    server.honour_range = honour_range
    source = make_source(server.handler, kind="bulk")
    cursor, delivered, deletes_seen = None, [], []
    for _ in range(10):
        stream = source.stream("Patient", cursor)
        page = next(stream)
        stream.close()  # the caller stops after one page, as the sync runner does
        delivered += [r["id"] for r in page.resources]
        deletes_seen.append(server.deleted)
        if Cursor.decode(page.cursor).resume is None:
            break
        cursor = page.cursor
    assert delivered == [f"p{i}" for i in range(5)]
    kickoffs = [r for r in server.handler.requests if "$export" in r.url.path]
    assert len(kickoffs) == 1
    ranges = [
        r.headers.get("Range")
        for r in server.handler.requests
        if r.url.host == "files.example" and r.url.path.endswith("Patient.ndjson")
    ]
    assert ranges[0] is None and all(r is not None for r in ranges[1:])
    assert deletes_seen[-1] and not any(deletes_seen[:-1])  # deleted only when done


def test_bulk_files_without_required_token_never_see_our_token() -> None:
    server = FakeBulkServer(polls_before_done=0, requires_token=False)
    source = make_source(server.handler, kind="bulk", auth={"kind": "bearer", "token": "tok"})
    list(source.stream("Patient"))
    downloads = [r for r in server.handler.requests if r.url.host == "files.example"]
    assert downloads and all("Authorization" not in r.headers for r in downloads)


@pytest.mark.parametrize("level", ["patient", "group"])
def test_bulk_kickoff_levels(level: str) -> None:
    server = FakeBulkServer(polls_before_done=0)
    options = {"bulk_level": level, "group_id": "g1"}
    list(make_source(server.handler, kind="bulk", options=options).stream("Patient"))
    expected = {"patient": "/fhir/Patient/$export", "group": "/fhir/Group/g1/$export"}[level]
    assert server.handler.requests[0].url.path == expected


def test_bulk_job_failure_is_reported_and_the_job_still_deleted() -> None:
    server = FakeBulkServer()

    def failing(request: httpx.Request, n: int) -> httpx.Response:
        if str(request.url) == server.status_url and request.method == "GET":
            return httpx.Response(500, json=outcome("export exploded", "exception"))
        return server.answer(request, n)

    server.handler.answer = failing
    with pytest.raises(BulkExportError, match="export exploded"):
        list(make_source(server.handler, kind="bulk").stream("Patient"))
    assert server.deleted


def test_bulk_polling_is_bounded_in_time() -> None:
    server = FakeBulkServer(polls_before_done=10**6)
    source = make_source(server.handler, kind="bulk", options={"max_poll_s": 10})
    with pytest.raises(BulkExportError, match="not complete"):
        list(source.stream("Patient"))
    assert server.polls < 10**6 and server.deleted


def write_ndjson(path: Path, resources: list[dict], extra_lines: tuple[str, ...] = ()) -> None:
    path.write_text("\n".join([*(json.dumps(r) for r in resources), *extra_lines]) + "\n")


def test_ndjson_directory_reads_resumes_and_skips_finished_files(tmp_path: Path) -> None:
    write_ndjson(tmp_path / "Patient.ndjson", [patient(f"a{i}") for i in range(3)], ("[1, 2]",))
    write_ndjson(tmp_path / "Patient.001.ndjson", [patient("b0")])
    write_ndjson(tmp_path / "Encounter.ndjson", [])
    config = SourceConfig(kind="ndjson", base_url=str(tmp_path), options={"page_size": 2})
    source = build_source(config)
    assert source.check().resource_types == ["Encounter", "Patient"]
    pages = list(source.stream("Patient"))
    assert [r["id"] for p in pages for r in p.resources] == ["a0", "a1", "a2", "b0"]
    assert [o["issue"][0]["diagnostics"] for p in pages for o in p.outcomes] == [
        "Patient.ndjson line 4: not a JSON object"
    ]
    # resume from the first page's cursor: the rest, nothing twice
    rest = list(source.stream("Patient", pages[0].cursor))
    assert [r["id"] for p in rest for r in p.resources] == ["a2", "b0"]
    # after a full run nothing is new; a new delivery file is picked up
    assert [r for p in source.stream("Patient", pages[-1].cursor) for r in p.resources] == []
    write_ndjson(tmp_path / "Patient.002.ndjson", [patient("c0")])
    newer = list(source.stream("Patient", pages[-1].cursor))
    assert [r["id"] for p in newer for r in p.resources] == ["c0"]
    assert source.fetch("Patient", "b0") == patient("b0")
    assert source.fetch("Patient", "zz") is None


def test_bad_options_are_rejected_before_any_request() -> None:
    with pytest.raises(ValueError, match="unknown source option"):
        build_source(SourceConfig(kind="fhir", base_url=BASE, options={"pagesize": 5}))
    with pytest.raises(ValueError, match="page_size must be a whole number"):
        build_source(SourceConfig(kind="fhir", base_url=BASE, options={"page_size": "50"}))
    with pytest.raises(ValueError, match="sort must be true or false"):
        build_source(SourceConfig(kind="fhir", base_url=BASE, options={"sort": "no"}))
    with pytest.raises(ValueError, match="group_id"):
        build_source(SourceConfig(kind="bulk", base_url=BASE, options={"bulk_level": "group"}))


def test_resuming_a_file_at_its_end_or_midway_by_range() -> None:
    body = b'{"a":1}\n{"b":2}\r\n{"c":3}'

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        start = int(request.headers.get("Range", "bytes=0-")[len("bytes=") :].rstrip("-"))
        if start >= len(body):
            return httpx.Response(416)
        return httpx.Response(206 if start else 200, content=body[start:])

    source = make_source(Recorder(answer))
    assert isinstance(source, RestSource)
    http = source.http
    lines = list(http.stream_lines(f"{BASE}/f.ndjson"))
    assert lines == [(b'{"a":1}', 8), (b'{"b":2}', 17), (b'{"c":3}', 24)]
    assert list(http.stream_lines(f"{BASE}/f.ndjson", start_byte=8)) == lines[1:]
    assert list(http.stream_lines(f"{BASE}/f.ndjson", start_byte=24)) == []
