"""Migration 0004: links, review items and golden versions lost their row-by-row foreign
keys; what the keys did on delete is still done (a record takes its link and review
items, a golden record its versions) or still refused (a golden record a link or a
review item names), on both backends, and the downgrade brings the keys back."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, insert, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store import downgrade, make_engine, upgrade
from store.models import (
    FieldProvenance,
    GoldenPatient,
    GoldenPatientVersion,
    GoldenSearchToken,
    Link,
    ReviewItem,
    Source,
    SourceRecord,
)

#: Tables whose keys 0004 dropped.
_TABLES = ("link", "golden_patient_version", "review_item")


def _count(session: Session, model: Any, *where: Any) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _seed(session: Session) -> tuple[int, int]:
    """Two records, golden records g1 (two versions, provenance, a token) and g2, a link
    of each record to g1, a review item of the second record naming g1 and g2."""
    source_id = session.execute(
        insert(Source).values(name="one", kind="ndjson", base_url="/x").returning(Source.id)
    ).scalar_one()
    records = [
        session.execute(
            insert(SourceRecord)
            .values(source_id=source_id, resource_type="Patient", resource_id=f"p{i}")
            .returning(SourceRecord.id)
        ).scalar_one()
        for i in (1, 2)
    ]
    for golden in ("g1", "g2"):
        session.execute(insert(GoldenPatient).values(id=golden, resource={}))
    for version in (1, 2):
        session.execute(
            insert(GoldenPatientVersion).values(golden_id="g1", version=version, resource={})
        )
    session.execute(
        insert(FieldProvenance).values(
            golden_id="g1", field="gender", value="f", source_record_id=records[0], rule="r"
        )
    )
    session.execute(insert(GoldenSearchToken).values(golden_id="g1", param="gender", value="f"))
    for record in records:
        session.execute(
            insert(Link).values(source_record_id=record, golden_id="g1", grade="certain")
        )
    session.execute(
        insert(ReviewItem).values(
            kind="duplicate-golden",
            source_record_id=records[1],
            golden_id="g1",
            other_golden_id="g2",
        )
    )
    session.commit()
    return records[0], records[1]


def test_deleting_a_record_takes_its_link_and_review_items(engine: Engine) -> None:
    with Session(engine) as session:
        first, second = _seed(session)
        session.execute(delete(SourceRecord).where(SourceRecord.id == second))
        session.commit()
        assert session.scalars(select(Link.source_record_id)).all() == [first]
        assert _count(session, ReviewItem) == 0


@pytest.mark.parametrize(
    ("column", "value"),
    [("link", None), ("golden_id", "g2"), ("other_golden_id", "g2")],
)
def test_a_golden_record_still_referenced_cannot_be_deleted(
    engine: Engine, column: str, value: str | None
) -> None:
    """g1 is named by the links (``link``), g2 by the review item's ``golden_id`` or
    ``other_golden_id``: each of them alone refuses the delete, which changes nothing."""
    with Session(engine) as session:
        _seed(session)
        if column == "link":
            target = "g1"
            session.execute(delete(ReviewItem))
        else:
            target = "g2"
            session.execute(
                ReviewItem.__table__.update().values(golden_id=None, other_golden_id=None)
            )
            session.execute(ReviewItem.__table__.update().values({column: value}))
        session.commit()
        before = _count(session, GoldenPatientVersion), _count(session, FieldProvenance)
        with pytest.raises(IntegrityError):
            session.execute(delete(GoldenPatient).where(GoldenPatient.id == target))
            session.flush()
        session.rollback()
        assert _count(session, GoldenPatient, GoldenPatient.id == target) == 1
        assert (_count(session, GoldenPatientVersion), _count(session, FieldProvenance)) == before


def test_an_unreferenced_golden_record_goes_with_its_versions(engine: Engine) -> None:
    with Session(engine) as session:
        _seed(session)
        session.execute(delete(ReviewItem))
        session.execute(delete(Link))
        session.execute(delete(GoldenPatient).where(GoldenPatient.id == "g1"))
        session.commit()
        assert session.scalars(select(GoldenPatient.id)).all() == ["g2"]
        assert _count(session, GoldenPatientVersion) == 0
        assert _count(session, FieldProvenance) == 0
        assert _count(session, GoldenSearchToken) == 0


def test_a_link_is_not_checked_on_insert(engine: Engine) -> None:
    """What the keys checked at every insert is the MPI's to keep (it links what its
    transaction wrote or read)."""
    with Session(engine) as session:
        session.execute(insert(Link).values(source_record_id=999, golden_id="nope", grade="x"))
        session.commit()
        assert _count(session, Link) == 1


def _keys(engine: Engine) -> dict[str, list[list[str]]]:
    inspector = inspect(engine)
    return {
        table: sorted(key["constrained_columns"] for key in inspector.get_foreign_keys(table))
        for table in _TABLES
    }


def test_downgrade_brings_the_keys_back_and_keeps_the_rows(empty_db_url: str) -> None:
    upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    assert _keys(engine) == {table: [] for table in _TABLES}
    with Session(engine) as session:
        _seed(session)
    engine.dispose()

    downgrade(empty_db_url, "0003")
    engine = make_engine(empty_db_url)
    assert _keys(engine) == {
        "link": [["golden_id"], ["source_record_id"]],
        "golden_patient_version": [["golden_id"]],
        "review_item": [["golden_id"], ["other_golden_id"], ["source_record_id"]],
    }
    with Session(engine) as session:
        assert (_count(session, Link), _count(session, ReviewItem)) == (2, 1)
        assert _count(session, GoldenPatientVersion) == 2
        # The keys refuse and cascade as before 0004, the triggers as 0003 made them.
        with pytest.raises(IntegrityError):
            session.execute(delete(GoldenPatient).where(GoldenPatient.id == "g1"))
            session.flush()
        session.rollback()
        session.execute(delete(SourceRecord))
        session.commit()
        assert (_count(session, Link), _count(session, ReviewItem)) == (0, 0)
    engine.dispose()

    upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    assert _keys(engine) == {table: [] for table in _TABLES}
    engine.dispose()
