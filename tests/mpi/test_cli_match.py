"""``askonce match train|evaluate`` and ``askonce links export`` on a real SQLite file."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from askonce.cli import app
from mpi import resolve_patients
from store import make_engine, make_session_factory, upgrade
from store.models import MatchModel as MatchModelRow
from tests.mpi.helpers import add_record, add_source, fhir_patient

runner = CliRunner()


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'match.db'}"
    upgrade(url)
    monkeypatch.setenv("ASKONCE_DATABASE_URL", url)
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        a, b = add_source(session, "ehr-a"), add_source(session, "ehr-b")
        items = [
            add_record(session, a, fhir_patient("a1", ssn="512-34-6789")),
            add_record(session, b, fhir_patient("b1", given="Bob", ssn="512-34-6789")),
            add_record(
                session,
                a,
                fhir_patient(
                    "a2",
                    given="Mildred",
                    family="Okafor",
                    birth="1944-12-01",
                    gender="female",
                    phone="(617) 555-0199",
                    line="3 Elm St",
                    postal="02110",
                    city="Boston",
                ),
            ),
        ]
        resolve_patients(session, items)
        session.commit()
    engine.dispose()
    return url


def test_links_export_writes_the_crosswalk(database: str, tmp_path: Path) -> None:
    target = tmp_path / "links.csv"
    result = runner.invoke(app, ["links", "export", "--out", str(target)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["resource_id"] for r in rows] == ["a1", "a2", "b1"]
    assert list(rows[0]) == [
        "source",
        "resource_type",
        "resource_id",
        "golden_id",
        "grade",
        "score",
    ]
    by_id = {r["resource_id"]: r for r in rows}
    assert by_id["a1"]["golden_id"] == by_id["b1"]["golden_id"] != by_id["a2"]["golden_id"]


def test_evaluate_against_a_truth_file(database: str, tmp_path: Path) -> None:
    truth = tmp_path / "truth.csv"
    truth.write_text(
        "source,resource_type,resource_id,person_id,tags\n"
        "ehr-a,Patient,a1,p1,nickname\nehr-b,Patient,b1,p1,\nehr-a,Patient,a2,p2,\n"
    )
    result = runner.invoke(app, ["match", "evaluate", "--truth", str(truth), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["precision"] == 1.0 and report["recall"] == 1.0
    assert report["overlays"] == 0 and report["recall_by_tag"]["nickname"] == 1.0
    text = runner.invoke(app, ["match", "evaluate", "--truth", str(truth)])
    assert text.exit_code == 0 and "overlays" in text.output


def test_evaluate_refuses_a_file_without_the_columns(database: str, tmp_path: Path) -> None:
    truth = tmp_path / "bad.csv"
    truth.write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["match", "evaluate", "--truth", str(truth)])
    assert result.exit_code == 2


def test_train_stores_an_active_model(database: str) -> None:
    result = runner.invoke(app, ["match", "train", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "birth_date" in result.output
    engine = make_engine(database)
    with make_session_factory(engine)() as session:
        rows = session.query(MatchModelRow).all()
    engine.dispose()
    assert len(rows) == 1 and rows[0].active and rows[0].trained_on == 3
