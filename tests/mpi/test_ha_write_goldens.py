"""write_goldens' reads and provenance rewrite at the driver level: a record merged into
another keeps its links across later writes, a rewritten record holds exactly the
provenance of its members (none left from before), on both backends."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_mapping import GoldenLink, search_tokens
from mpi.settings import MatchSettings
from mpi.storage import GoldenPlan, member_records, write_goldens
from mpi.survivorship import build_golden
from store.models import FieldProvenance, GoldenPatient, GoldenSearchToken
from tests.mpi.helpers import add_record, add_source, fhir_patient


def _provenance(session: Session, golden_id: str) -> list[tuple[object, ...]]:
    return sorted(
        (p.field, p.source_record_id, p.rule)
        for p in session.scalars(
            select(FieldProvenance).where(FieldProvenance.golden_id == golden_id)
        )
    )


def _links(session: Session, golden_id: str) -> list[dict[str, object]]:
    golden = session.get(GoldenPatient, golden_id)
    assert golden is not None
    return list(golden.resource.get("link") or [])


def test_merged_record_links_and_provenance_survive_later_writes(session: Session) -> None:
    settings = MatchSettings()
    a_source = add_source(session, "ehr-a", 60)
    b_source = add_source(session, "ehr-b", 40)
    first, _ = add_record(session, a_source, fhir_patient("a1", phone="(415) 867-5309"))
    second, _ = add_record(session, b_source, fhir_patient("b1", phone="(510) 555-0100"))
    session.commit()

    versions = write_goldens(
        session,
        settings,
        [GoldenPlan("g-a", [first.id], True), GoldenPlan("g-b", [second.id], True)],
    )
    session.commit()
    assert versions == {"g-a": 1, "g-b": 1}
    assert {rule for _, _, rule in _provenance(session, "g-a")} == {"only-source"}

    # g-b merges into g-a, which takes both members.
    versions = write_goldens(
        session,
        settings,
        [
            GoldenPlan("g-a", [first.id, second.id]),
            GoldenPlan("g-b", [], status="merged", merged_into="g-a"),
        ],
    )
    session.commit()
    session.expire_all()
    assert versions == {"g-a": 2, "g-b": 2}
    assert _links(session, "g-b") == [
        {"other": {"reference": "Patient/g-a"}, "type": "replaced-by"}
    ]
    assert _links(session, "g-a") == [{"other": {"reference": "Patient/g-b"}, "type": "replaces"}]
    assert (
        session.scalars(select(GoldenSearchToken).where(GoldenSearchToken.golden_id == "g-b")).all()
        == []
    )
    assert _provenance(session, "g-b") == []

    # A later write of g-a alone reads the merge back from the database.
    versions = write_goldens(session, settings, [GoldenPlan("g-a", [first.id, second.id])])
    session.commit()
    session.expire_all()
    assert versions == {"g-a": 3}
    assert _links(session, "g-a") == [{"other": {"reference": "Patient/g-b"}, "type": "replaces"}]
    members = member_records(session, [first.id, second.id])
    _, provenance = build_golden(
        "g-a", members, settings.survivorship, links=[GoldenLink("g-b", "replaces")]
    )
    assert _provenance(session, "g-a") == sorted((p.field, p.record_id, p.rule) for p in provenance)
    assert "only-source" not in {rule for _, _, rule in _provenance(session, "g-a")}
    golden = session.get(GoldenPatient, "g-a")
    assert golden is not None
    tokens = sorted(
        (t.param, t.system, t.value)
        for t in session.scalars(
            select(GoldenSearchToken).where(GoldenSearchToken.golden_id == "g-a")
        )
    )
    assert tokens == sorted(search_tokens(golden.resource))
    assert len(golden.resource["telecom"]) == 2
