"""NDJSON lines recognised unchanged by their digest (migration 0006), never decoded.

A page of undecoded lines (``Page.lines``) must do exactly what the page of the same
resources, decoded, does: the same records, counters, events and cursor; only the lines
whose bytes a stored record was last stored from (and that need no work) are skipped
without being decoded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import sync.pipeline as pipeline
from connectors import Page, SourceConfig, SourceOptions
from connectors.config import RawLine
from connectors.ndjson import NdjsonDirectorySource, decode_lines
from store.models import Outbox, SourceRecord
from sync import IngestResult, TaskContext, apply_deletions, ingest_page, run_source
from sync.records import has_records, line_digest
from tests.sync.helpers import add_source, encounter, patient, records, write_ndjson


def as_line(resource: Any) -> bytes:
    return (json.dumps(resource) + "\n").encode()


def lines_of(resources: list[Any], where: str = "Patient.ndjson") -> list[RawLine]:
    return [(as_line(r), where, number) for number, r in enumerate(resources, start=1)]


def line_page(rtype: str, resources: list[Any], cursor: str | None = "c") -> Page:
    return Page(rtype, [], cursor, lines=lines_of(resources, f"{rtype}.ndjson"))


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Line numbers the pipeline decodes."""
    seen: list[int] = []
    real = pipeline.parse_line

    def counting(raw: bytes, where: str, number: int) -> Any:
        seen.append(number)
        return real(raw, where, number)

    monkeypatch.setattr(pipeline, "parse_line", counting)
    return seen


def ingest(session_factory: sessionmaker[Session], source_id: int, page: Page) -> IngestResult:
    with session_factory() as session:
        result = ingest_page(session, source_id, page)
        session.commit()
    return result


def state(session: Session, source_id: int) -> list[tuple[Any, ...]]:
    return [
        (r.resource_type, r.resource_id, r.status, r.content_hash, r.raw, r.line_digest)
        for r in session.scalars(
            select(SourceRecord)
            .where(SourceRecord.source_id == source_id)
            .order_by(SourceRecord.resource_type, SourceRecord.resource_id)
        )
    ]


def test_the_digest_is_of_the_bytes_without_the_line_break() -> None:
    line = b'{"resourceType":"Patient","id":"p1"}'
    assert line_digest(line) == line_digest(line + b"\n") == line_digest(line + b" \r\n")
    assert len(line_digest(line)) == 32
    assert line_digest(line) != line_digest(b'{"id":"p1","resourceType":"Patient"}')
    assert line_digest(line) != line_digest(b" " + line)


def test_the_connector_leaves_its_lines_undecoded_and_stream_decodes_them(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient("p1"), patient("p2")])
    with (folder / "Patient.ndjson").open("ab") as handle:
        handle.write(b"\n[1, 2]\n{broken\n")
        handle.write(as_line(patient("p3")))
    source = NdjsonDirectorySource(
        SourceConfig(kind="ndjson", base_url=str(folder)), SourceOptions(page_size=3)
    )
    pages = list(source.stream_lines("Patient"))
    assert [[number for _, _, number in page.lines] for page in pages] == [[1, 2, 4], [5, 6]]
    assert all(page.resources == [] and page.outcomes == [] for page in pages)
    assert pages[0].lines[0] == (as_line(patient("p1")), "Patient.ndjson", 1)
    decoded = [decode_lines(page) for page in pages]
    assert [[r["id"] for r in page.resources] for page in decoded] == [["p1", "p2"], ["p3"]]
    assert [len(page.outcomes) for page in decoded] == [1, 1]
    assert "line 4" in decoded[0].outcomes[0]["issue"][0]["diagnostics"]
    assert [page.cursor for page in decoded] == [page.cursor for page in pages]
    # A run resumed from the first page's cursor reads on from line 5.
    resumed = list(source.stream_lines("Patient", pages[0].cursor))
    assert [number for _, _, number in resumed[0].lines] == [5, 6]


def test_a_page_of_lines_stores_what_the_decoded_page_stores_and_each_line_digest(
    session_factory: sessionmaker[Session],
) -> None:
    page = [
        patient("p1"),
        patient("p2", "Nguyen", "Van"),
        patient("bad", birthDate="not-a-date"),
        patient("p1", "Okafor", "Adaeze", updated="2026-01-11T10:00:00Z"),
    ]
    by_lines = add_source(session_factory, "lines")
    decoded = add_source(session_factory, "decoded")
    first = ingest(session_factory, by_lines, line_page("Patient", page))
    second = ingest(session_factory, decoded, decode_lines(line_page("Patient", page)))
    # (The second source's Patients meet the first one's in the MPI: only its counters.)
    counters = ("resources", "stored", "quarantined", "skipped", "unreadable", "attached")
    assert [getattr(first, c) for c in counters] == [getattr(second, c) for c in counters]
    assert (first.resources, first.stored, first.quarantined, first.skipped) == (4, 2, 1, 1)
    with session_factory() as session:
        stored = state(session, by_lines)
        assert [row[:5] for row in stored] == [row[:5] for row in state(session, decoded)]
        assert [row[5] for row in stored] == [
            line_digest(as_line(page[2])),
            line_digest(as_line(page[3])),
            line_digest(as_line(page[1])),
        ]
        assert all(row[5] is None for row in state(session, decoded))


def test_unchanged_lines_are_skipped_without_being_decoded(
    session_factory: sessionmaker[Session], decodes: list[int]
) -> None:
    source_id = add_source(session_factory)
    patients = [patient("p1"), patient("p2", "Nguyen", "Van"), patient("bad", gender="x")]
    ingest(session_factory, source_id, line_page("Patient", patients))
    encounters = [encounter("e1", "p1"), encounter("e2", "p2"), encounter("e3", "later")]
    ingest(session_factory, source_id, line_page("Encounter", encounters))
    with session_factory() as session:
        before = state(session, source_id)
        events_before = len(session.scalars(select(Outbox.id)).all())
    decodes.clear()
    again = ingest(session_factory, source_id, line_page("Patient", patients, "c2"))
    assert (again.resources, again.skipped, again.stored, again.quarantined) == (3, 3, 0, 0)
    again = ingest(session_factory, source_id, line_page("Encounter", encounters, "c2"))
    assert (again.resources, again.skipped, again.stored, again.waiting) == (3, 3, 0, 0)
    assert decodes == []
    with session_factory() as session:
        assert state(session, source_id) == before
        assert len(session.scalars(select(Outbox.id)).all()) == events_before
        statuses = {r.resource_id: r.status for r in records(session, source_id)}
        assert statuses == {
            "p1": "active",
            "p2": "active",
            "bad": "quarantined",
            "e1": "active",
            "e2": "active",
            "e3": "pending",
        }


def test_a_changed_line_is_decoded_stored_and_its_new_digest_kept(
    session_factory: sessionmaker[Session], decodes: list[int]
) -> None:
    source_id = add_source(session_factory)
    ingest(session_factory, source_id, line_page("Patient", [patient("p1"), patient("p2")]))
    changed = patient("p2", "Nguyen", "Van", updated="2026-02-01T00:00:00Z")
    decodes.clear()
    result = ingest(session_factory, source_id, line_page("Patient", [patient("p1"), changed]))
    assert decodes == [2]
    assert (result.stored, result.skipped) == (1, 1)
    with session_factory() as session:
        (p2,) = records(session, source_id, resource_id="p2")
        assert p2.raw is not None and p2.raw["name"][0]["family"] == "Nguyen"
        assert p2.line_digest == line_digest(as_line(changed))
    # Only meta changed: decoded, found unchanged by content hash, skipped as before.
    bumped = patient("p1", updated="2026-03-01T00:00:00Z")
    decodes.clear()
    result = ingest(session_factory, source_id, line_page("Patient", [bumped]))
    assert decodes == [1] and (result.skipped, result.stored) == (1, 0)


def test_a_deleted_record_line_is_decoded_and_the_record_comes_back(
    session_factory: sessionmaker[Session], decodes: list[int]
) -> None:
    source_id = add_source(session_factory)
    ingest(session_factory, source_id, line_page("Patient", [patient("p1")]))
    with session_factory() as session:
        apply_deletions(session, source_id, "Patient", ["p1"])
        session.commit()
    decodes.clear()
    # The version that was deleted, read again (a stale copy): it stays deleted.
    stale = ingest(session_factory, source_id, line_page("Patient", [patient("p1")]))
    assert decodes == [1] and (stale.stored, stale.skipped) == (0, 1)
    # The resource created again (a newer version): it comes back.
    again = patient("p1", updated="2026-03-01T00:00:00Z")
    result = ingest(session_factory, source_id, line_page("Patient", [again]))
    assert decodes == [1, 1] and result.stored == 1
    with session_factory() as session:
        assert [r.status for r in records(session, source_id)] == ["active"]


@pytest.mark.parametrize("unchanged_first", [True, False])
@pytest.mark.parametrize("changed_is_newer", [True, False])
def test_an_unchanged_line_and_a_changed_one_of_the_same_id_keep_the_newer(
    session_factory: sessionmaker[Session], unchanged_first: bool, changed_is_newer: bool
) -> None:
    """As with decoded resources: the newer ``lastUpdated`` wins, whichever line it is."""
    stored = patient("p1", updated="2026-01-10T10:00:00Z")
    changed = patient(
        "p1",
        "Okafor",
        "Adaeze",
        updated="2026-01-12T10:00:00Z" if changed_is_newer else "2026-01-01T10:00:00Z",
    )
    order = [stored, changed] if unchanged_first else [changed, stored]
    given: dict[str, str] = {}
    for kind in ("lines", "decoded"):
        source_id = add_source(session_factory, kind)
        ingest(session_factory, source_id, line_page("Patient", [stored]))
        page = line_page("Patient", order)
        result = ingest(session_factory, source_id, page if kind == "lines" else decode_lines(page))
        assert (result.resources, result.skipped, result.stored) == (
            2,
            1 if changed_is_newer else 2,
            1 if changed_is_newer else 0,
        )
        with session_factory() as session:
            (record,) = records(session, source_id)
            assert record.raw is not None
            given[kind] = record.raw["name"][0]["given"][0]
    assert given == {"lines": given["decoded"], "decoded": "Adaeze" if changed_is_newer else "Ada"}


def test_a_record_whose_mapping_failed_keeps_no_digest_and_is_retried(
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    decodes: list[int],
) -> None:
    import sync.patients

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("mapping defect")

    source_id = add_source(session_factory)
    with monkeypatch.context() as patched:
        patched.setattr(sync.patients, "parse_patient", broken)
        result = ingest(session_factory, source_id, line_page("Patient", [patient("p1")]))
    assert result.quarantined == 1
    with session_factory() as session:
        (record,) = records(session, source_id)
        assert (record.status, record.line_digest) == ("quarantined", None)
    decodes.clear()
    result = ingest(session_factory, source_id, line_page("Patient", [patient("p1")]))
    assert decodes == [1] and result.stored == 1


def test_resources_that_came_without_lines_keep_no_digest(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    ingest(session_factory, source_id, Page("Patient", [patient("p1")], "c"))
    ingest(session_factory, source_id, Page("Encounter", [encounter("e1", "p1")], "c"))
    with session_factory() as session:
        assert [r.line_digest for r in records(session, source_id)] == [None, None]


def test_lines_of_another_source_or_type_are_not_taken_for_this_ones(
    session_factory: sessionmaker[Session], decodes: list[int]
) -> None:
    first = add_source(session_factory, "first")
    second = add_source(session_factory, "second")
    ingest(session_factory, first, line_page("Patient", [patient("p1")]))
    decodes.clear()
    result = ingest(session_factory, second, line_page("Patient", [patient("p1")]))
    assert decodes == [1] and result.stored == 1
    odd = {"resourceType": "Patient", "id": "p1"}
    ingest(session_factory, first, line_page("Encounter", [odd]))
    with session_factory() as session:
        assert sorted((r.resource_type, r.status) for r in records(session, first)) == [
            ("Encounter", "quarantined"),
            ("Patient", "active"),
        ]


def test_a_full_resync_of_an_ndjson_folder_decodes_nothing_and_counts_as_before(
    engine: Engine,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    decodes: list[int],
) -> None:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient(f"p{i}", birth=f"19{50 + i}-01-02") for i in range(7)])
    write_ndjson(folder, "Encounter", [encounter(f"e{i}", f"p{i % 9}") for i in range(12)])
    source_id = add_source(session_factory, base_url=str(folder), config={"page_size": 4})
    context = TaskContext(engine=engine, session_factory=session_factory)
    first = run_source(context, source_id, max_pages=None)
    assert (first.result.resources, first.result.stored) == (19, 19)
    assert first.result.waiting == 2  # e7 and e8: no p7 or p8 in the folder
    decodes.clear()
    again = run_source(context, source_id, full=True, max_pages=None)
    assert decodes == []
    assert (again.result.resources, again.result.skipped, again.result.stored) == (19, 19, 0)
    # A line changed in place is the only one decoded on the next full run.
    write_ndjson(
        folder,
        "Patient",
        [
            patient(f"p{i}", birth=f"19{50 + i}-01-02", gender="male" if i == 3 else "female")
            for i in range(7)
        ],
    )
    decodes.clear()
    third = run_source(context, source_id, full=True, max_pages=None)
    assert decodes == [4]
    assert (third.result.stored, third.result.skipped) == (1, 18)


@pytest.fixture
def look_ups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of digests of each :func:`sync.records.known_lines` read."""
    seen: list[int] = []
    real = pipeline.known_lines

    def counting(session: Session, source_id: int, rtype: str, digests: Any) -> Any:
        seen.append(len(digests))
        return real(session, source_id, rtype, digests)

    monkeypatch.setattr(pipeline, "known_lines", counting)
    return seen


def test_has_records_is_per_source_and_type(
    session_factory: sessionmaker[Session],
) -> None:
    a = add_source(session_factory, name="a")
    b = add_source(session_factory, name="b")
    with session_factory() as session:
        assert not has_records(session, a, "Patient")
    ingest(session_factory, a, line_page("Patient", [patient("p1")]))
    with session_factory() as session:
        assert has_records(session, a, "Patient")
        assert not has_records(session, a, "Encounter")
        assert not has_records(session, b, "Patient")


def test_a_first_sync_reads_no_digests_and_skips_its_own_repeated_lines_by_hash(
    engine: Engine,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    decodes: list[int],
    look_ups: list[int],
) -> None:
    folder = tmp_path / "ehr"
    people = [patient(f"p{i}", birth=f"19{50 + i}-01-02") for i in range(5)]
    # p1's line comes again on the second page, byte for byte.
    write_ndjson(folder, "Patient", [*people, people[1]])
    write_ndjson(folder, "Encounter", [encounter(f"e{i}", f"p{i}") for i in range(5)])
    source_id = add_source(session_factory, base_url=str(folder), config={"page_size": 4})
    context = TaskContext(engine=engine, session_factory=session_factory)
    first = run_source(context, source_id, max_pages=None)
    assert look_ups == []  # the source had no records: nothing to look up
    assert decodes == [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5]
    assert (first.result.resources, first.result.stored, first.result.skipped) == (11, 10, 1)
    with session_factory() as session:
        assert len(records(session, source_id)) == 10
    decodes.clear()
    again = run_source(context, source_id, full=True, max_pages=None)
    assert decodes == []
    assert look_ups == [4, 2, 4, 1]  # each page's lines, looked up
    assert (again.result.resources, again.result.skipped, again.result.stored) == (11, 11, 0)


def test_a_stream_looks_up_its_lines_once_the_source_has_records_of_the_type(
    engine: Engine,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    look_ups: list[int],
) -> None:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient("p1"), patient("p2", "Lee")])
    source_id = add_source(session_factory, base_url=str(folder), config={"page_size": 10})
    # A resource pushed before the first sync: the source has a Patient, so lines are looked up.
    ingest(session_factory, source_id, Page("Patient", [patient("p0", "Ng")], None))
    context = TaskContext(engine=engine, session_factory=session_factory)
    run_source(context, source_id, max_pages=None)
    assert look_ups == [2]
