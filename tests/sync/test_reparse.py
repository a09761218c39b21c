"""Stored Patients read again when what reads them changed (sync.reparse): an upgrade of
the mapping, or a new parse option of the source, reaches the records a sync skips as
unchanged, and their golden records."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

import mpi.storage
import sync.reparse
from askonce.cli import app
from connectors import Page
from fhir_mapping import InvalidResource, Issue
from gateway.auth import TokenService
from mpi import recompute_goldens
from mpi.features import decode_features
from store.models import GoldenPatient, Link, Outbox
from store.models import Source as SourceRow
from sync import TaskContext, ingest_page
from sync.reparse import is_stale, parse_stamp, parsed_with, reparse_source
from sync.runner import bound_patient_options
from sync.scheduling import dispatch_due
from sync.tasks import schedule_due
from tests.sync.helpers import add_source, embedded, events, patient, records, write_ndjson

MARRIED = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]
}
SECRET = "reparse-test-secret-" + "k" * 24
#: What a release before marital status, birth order and contacts left out of the record.
OLD_READING = ("marital_status", "multiple_birth", "contacts")


def synced(
    session_factory: sessionmaker[Session], resources: list[dict[str, Any]], **fields: Any
) -> int:
    source_id = add_source(session_factory, **fields)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", resources, "c"))
        session.commit()
    return source_id


def source_row(session: Session, source_id: int) -> SourceRow:
    source = session.get(SourceRow, source_id)
    assert source is not None
    return source


def stale(session_factory: sessionmaker[Session], source_id: int) -> bool:
    with session_factory() as session:
        source = source_row(session, source_id)
        return is_stale(source)


def golden_of(session: Session, source_id: int, resource_id: str) -> GoldenPatient:
    [record] = records(session, source_id, resource_id=resource_id)
    link = session.scalars(select(Link).where(Link.source_record_id == record.id)).one()
    golden = session.get(GoldenPatient, link.golden_id)
    assert golden is not None
    return golden


def read_as_before_0017(session_factory: sessionmaker[Session], source_id: int) -> None:
    """Make the stored records what the release before MAPPING_VERSION 1 made of them,
    and their golden records what it rendered; the source's stamp unknown (migration 0017)."""
    with session_factory() as session:
        for record in records(session, source_id, status="active"):
            record.normalized = {
                k: v for k, v in (record.normalized or {}).items() if k not in OLD_READING
            }
        source_row(session, source_id).parsed_with = None
        session.flush()
        golden_ids = session.scalars(select(Link.golden_id)).all()
        recompute_goldens(session, golden_ids, skip_unchanged=True)
        session.commit()


def test_records_read_as_now_are_left_alone(session_factory: sessionmaker[Session]) -> None:
    source_id = synced(
        session_factory, [patient("p1"), patient("p2", "Lee", "Kim"), patient("p3", "Roe")]
    )
    assert stale(session_factory, source_id)  # stored before its stamp (as after 0017)
    with session_factory() as session:
        versions = dict(session.execute(select(GoldenPatient.id, GoldenPatient.version)).all())
        before = session.scalar(select(func.count()).select_from(Outbox))
    result = reparse_source(session_factory, source_id)
    assert (result.examined, result.unchanged, result.done) == (3, 3, True)
    assert result.refreshed == result.rematched == result.failed == result.goldens_updated == 0
    with session_factory() as session:
        assert dict(session.execute(select(GoldenPatient.id, GoldenPatient.version)).all()) == (
            versions
        )
        assert session.scalar(select(func.count()).select_from(Outbox)) == before
        mark = source_row(session, source_id).parsed_with
        assert mark == {
            "stamp": parse_stamp(bound_patient_options(source_row(session, source_id))),
            "through": None,
        }
    assert not stale(session_factory, source_id)
    again = reparse_source(session_factory, source_id)
    assert (again.examined, again.done) == (0, True)


def test_an_upgrade_reaches_the_records_stored_before_it(
    session_factory: sessionmaker[Session],
) -> None:
    """A release that keeps more of a Patient (marital status, birth order, next of kin)
    reaches the records stored before it, although a sync skips their unchanged content."""
    kin = [{"relationship": [{"text": "sister"}], "name": {"family": "Okafor", "given": ["Ngozi"]}}]
    twin = patient("p1", maritalStatus=MARRIED, multipleBirthInteger=2, contact=kin)
    source_id = synced(session_factory, [twin, patient("p2", "Lee", "Kim")])
    read_as_before_0017(session_factory, source_id)
    with session_factory() as session:
        golden = golden_of(session, source_id, "p1")
        golden_id, version = golden.id, golden.version
        assert "maritalStatus" not in golden.resource and "contact" not in golden.resource
        updated = events(session, "patient.updated")
        # Why it is needed: the EHR sends the same content, which a sync skips.
        skipped = ingest_page(session, source_id, Page("Patient", [twin], "c"))
        session.commit()
        assert skipped.skipped == 1
        assert "maritalStatus" not in golden_of(session, source_id, "p1").resource
    result = reparse_source(session_factory, source_id)
    assert (result.examined, result.refreshed, result.unchanged) == (2, 1, 1)
    assert (result.rematched, result.goldens_updated, result.done) == (0, 1, True)
    with session_factory() as session:
        golden = golden_of(session, source_id, "p1")
        assert (golden.id, golden.version) == (golden_id, version + 1)
        assert golden.resource["maritalStatus"] == MARRIED
        assert golden.resource["multipleBirthInteger"] == 2
        assert golden.resource["contact"][0]["name"]["given"] == ["Ngozi"]
        assert events(session, "patient.updated") == updated + 1
        [record] = records(session, source_id, resource_id="p1")
        assert record.normalized is not None and record.normalized["marital_status"]
    assert not stale(session_factory, source_id)


def test_a_process_that_cached_the_older_reading_does_not_serve_it_again(
    session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MPI caches parsed records by id and content hash, which a reading again keeps:
    another process (a worker, the API) that cached a record as the older reading made
    it forgets it once that source was read again, and renders what is stored now."""
    source_id = synced(session_factory, [patient("p1", maritalStatus=MARRIED)])
    read_as_before_0017(session_factory, source_id)  # this process caches that reading
    with session_factory() as session:
        golden_id = golden_of(session, source_id, "p1").id
    with monkeypatch.context() as elsewhere:  # another process, with a cache of its own
        elsewhere.setattr(mpi.storage, "_feature_cache", OrderedDict())
        elsewhere.setattr(mpi.storage, "_readings", None)
        assert reparse_source(session_factory, source_id).goldens_updated == 1
    assert mpi.storage._feature_cache  # still holding the older reading of p1
    with session_factory() as session:
        recompute_goldens(session, [golden_id])  # any later rendering, here
        session.commit()
        assert golden_of(session, source_id, "p1").resource["maritalStatus"] == MARRIED


def test_a_new_mrn_system_is_read_into_the_stored_records_and_checked_by_the_mpi(
    session_factory: sessionmaker[Session],
) -> None:
    """``mrn_system`` changes the match features: the record goes through the MPI again,
    as a new version of it would, and keeps its link."""
    mrn = {"system": "urn:ehr:mrn", "value": "m-1"}
    source_id = synced(session_factory, [patient("p1", identifier=[mrn]), patient("p2", "Lee")])
    with session_factory() as session:
        source = source_row(session, source_id)
        source.parsed_with = parsed_with(bound_patient_options(source))
        session.commit()
        golden_id = golden_of(session, source_id, "p1").id
    assert not stale(session_factory, source_id)
    with session_factory() as session:
        source = source_row(session, source_id)
        source.config = {**source.config, "mrn_system": "urn:ehr:mrn"}
        session.commit()
    assert stale(session_factory, source_id)
    result = reparse_source(session_factory, source_id)
    assert (result.examined, result.rematched, result.unchanged, result.done) == (2, 1, 1, True)
    with session_factory() as session:
        [record] = records(session, source_id, resource_id="p1")
        features = decode_features(record.match_features, record.content_hash)
        assert features is not None
        assert features.mrns == {("urn:ehr:mrn", "M1")} and not features.other_ids
        assert golden_of(session, source_id, "p1").id == golden_id
        assert source_row(session, source_id).parsed_with["stamp"]["mrn_system"] == "urn:ehr:mrn"  # type: ignore[index]


@pytest.fixture
def refused(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Resource ids a newer, stricter release of the Patient mapping refuses."""
    ids: set[str] = set()
    real = sync.reparse.parse_patient

    def parse(raw: dict[str, Any], **options: Any) -> Any:
        if raw.get("id") in ids:
            raise InvalidResource("Patient", raw.get("id"), [Issue("Patient.name", "refused")])
        return real(raw, **options)

    monkeypatch.setattr(sync.reparse, "parse_patient", parse)
    yield ids


def test_a_record_the_new_reading_refuses_is_kept_as_it_was(
    session_factory: sessionmaker[Session], refused: set[str]
) -> None:
    """An upgrade alone never quarantines a record that was served: it stays linked and
    served, and is counted, by id, for a steward to look at."""
    source_id = synced(session_factory, [patient("p1"), patient("p2", "Lee", "Kim")])
    read_as_before_0017(session_factory, source_id)
    refused.add("p2")
    with session_factory() as session:
        version = golden_of(session, source_id, "p2").version
        [p2] = records(session, source_id, resource_id="p2")
        p2_id, normalized = p2.id, p2.normalized
    result = reparse_source(session_factory, source_id)
    assert (result.examined, result.failed, result.failed_ids, result.done) == (2, 1, [p2_id], True)
    with session_factory() as session:
        [p2] = records(session, source_id, resource_id="p2")
        assert (p2.status, p2.normalized) == ("active", normalized)
        assert golden_of(session, source_id, "p2").version == version
    assert not stale(session_factory, source_id)


def test_a_pass_goes_on_where_it_stopped_and_starts_again_for_another_stamp(
    session_factory: sessionmaker[Session],
) -> None:
    people = [patient(f"p{i}", f"Family{i}", f"Given{i}", f"19{50 + i}-01-02") for i in range(5)]
    source_id = synced(session_factory, people)
    with session_factory() as session:
        ids = [r.id for r in records(session, source_id)]
    first = reparse_source(session_factory, source_id, batch=2, max_seconds=0)
    assert (first.examined, first.done) == (2, False)
    with session_factory() as session:
        assert source_row(session, source_id).parsed_with["through"] == sorted(ids)[1]  # type: ignore[index]
    assert stale(session_factory, source_id)
    second = reparse_source(session_factory, source_id, batch=2, stop=lambda: True)
    assert (second.examined, second.done) == (2, False)
    # The options change mid-pass: the records read so far were read otherwise.
    with session_factory() as session:
        source_row(session, source_id).config = {"default_region": "GB"}
        session.commit()
    third = reparse_source(session_factory, source_id, batch=2)
    assert (third.examined, third.unchanged, third.done) == (5, 5, True)
    assert not stale(session_factory, source_id)


def test_a_source_being_removed_or_gone_has_nothing_to_read(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = synced(session_factory, [patient("p1")])
    assert reparse_source(session_factory, source_id + 100).done
    with session_factory() as session:
        source_row(session, source_id).removing_since = source_row(session, source_id).created_at
        session.commit()
    result = reparse_source(session_factory, source_id)
    assert (result.examined, result.done) == (0, True)


def test_the_scheduler_tick_reads_the_stale_sources_again(
    session_factory: sessionmaker[Session],
) -> None:
    stale_id = synced(session_factory, [patient("p1")])
    current_id = add_source(session_factory, "current")
    with session_factory() as session:
        source = source_row(session, current_id)
        source.parsed_with = parsed_with(bound_patient_options(source))
        session.commit()
        context = TaskContext(engine=session.get_bind(), session_factory=session_factory)  # type: ignore[arg-type]
    asked: list[int] = []
    assert dispatch_due(context, lambda _: None, None, asked.append) == []
    assert asked == [stale_id]
    # Without the callback (a caller that does not read again), nothing is asked.
    assert dispatch_due(context, lambda _: None) == []
    assert asked == [stale_id]


def test_embedded_ticks_and_the_celery_tick_read_stale_sources_again(tmp_path: Path) -> None:
    runtime, folder = embedded(tmp_path, secret_key=SECRET)
    factory = runtime.session_factory
    people = [patient("p1", maritalStatus=MARRIED), patient("p2", "Lee")]
    source_id = synced(factory, people, base_url=str(folder))

    def married() -> bool:
        with factory() as session:
            return "maritalStatus" in golden_of(session, source_id, "p1").resource

    admin = {"Authorization": f"Bearer {TokenService(SECRET).issue('ops', ['askonce.admin'])}"}

    def pending() -> dict[str, Any]:
        with TestClient(runtime.create_app()) as client:
            [listed] = client.get("/admin/sources", headers=admin).json()
        return dict(listed["reparse"])

    for tick in (runtime.run_due, lambda: schedule_due.delay().get(timeout=60)):
        read_as_before_0017(factory, source_id)
        assert not married()
        assert pending() == {"pending": True, "through": None}
        tick()  # the embedded scheduler's, then a worker's task (eager here)
        assert married() and not stale(factory, source_id)
        assert pending() == {"pending": False, "through": None}


def test_the_cli_reads_stored_patients_again(cli_db: str, tmp_path: Path) -> None:
    url = cli_db
    folder = tmp_path / "ehr"
    mrn = {"system": "urn:ehr:mrn", "value": "m-1"}
    write_ndjson(
        folder,
        "Patient",
        [patient("p1", identifier=[mrn], maritalStatus=MARRIED), patient("p2", "Lee")],
    )
    runner = CliRunner()
    add = ["sources", "add", "ehr-x", "--kind", "ndjson", "--url", str(folder)]
    assert runner.invoke(app, add).exit_code == 0
    assert runner.invoke(app, ["sync", "ehr-x"]).exit_code == 0
    status = runner.invoke(app, ["sources", "status", "ehr-x"])
    assert "read again" not in status.output  # added by this version: read as it reads
    nothing = runner.invoke(app, ["sources", "reparse"])
    assert nothing.exit_code == 0 and "nothing to read again" in nothing.output
    # A new MRN system is read into the stored records at once.
    changed = runner.invoke(
        app, ["sources", "update", "ehr-x", "--option", "mrn_system=urn:ehr:mrn"]
    )
    assert changed.exit_code == 0, changed.output
    assert "read again 2" in changed.output and "matched again 1" in changed.output
    # An upgrade: what was stored before it is read again (here, to the end, at once).
    from store import make_engine, make_session_factory

    factory = make_session_factory(make_engine(url))
    with factory() as session:
        source_id = session.scalars(select(SourceRow.id)).one()
    read_as_before_0017(factory, source_id)
    status = runner.invoke(app, ["sources", "status", "ehr-x"])
    assert "stored patients being read again" in status.output, status.output
    done = runner.invoke(app, ["sources", "reparse", "ehr-x"])
    assert done.exit_code == 0, done.output
    assert "read again 2" in done.output and "refreshed 1" in done.output
    assert "golden records updated 1" in done.output
    with factory() as session:
        assert golden_of(session, source_id, "p1").resource["maritalStatus"] == MARRIED
    forced = runner.invoke(app, ["sources", "reparse", "--force"])
    assert "read again 2" in forced.output and "unchanged 2" in forced.output
    missing = runner.invoke(app, ["sources", "reparse", "nope"])
    assert missing.exit_code == 2 and "no source named" in missing.output
