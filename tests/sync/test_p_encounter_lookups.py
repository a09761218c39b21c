"""PostgreSQL plans of the Encounter page lookups (real database): the stored-record
and golden-id lookups, prepared once run often enough, are never run with a generic
plan, which, made from statistics older than the source's Encounters, filtered every
record of the source against the whole id array on each page (store.db.PG_OPTIONS)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from store.models import Encounter, SourceRecord
from sync import ingest_page
from sync.encounters import golden_ids_of_patients
from tests.sync.helpers import add_source, encounter, patient

PAGES = 8


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_pg_lookups_keep_custom_plans_and_stay_correct(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "p"))
        session.execute(text("ANALYZE source_record"))  # statistics without any Encounter
        session.commit()
    with session_factory() as session:
        for number in range(PAGES):
            page = [encounter(f"e{number}-{i}", "p1") for i in range(20)]
            # The page again, unchanged: skipped by the stored-record lookup.
            ingest_page(session, source_id, Page("Encounter", page, f"c{number}"))
            again = ingest_page(session, source_id, Page("Encounter", page, f"d{number}"))
            assert again.skipped == len(page)
            assert set(golden_ids_of_patients(session, source_id, ["p1", "p9"])) == {"p1"}
        session.commit()
        plans = session.execute(
            text("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        ).all()
        lookups = [
            (generic, custom) for sql, generic, custom in plans if "resource_id = ANY" in sql
        ]
        assert lookups, "the page lookups ran often enough to be prepared"
        assert all(generic == 0 and custom > 0 for generic, custom in lookups)
        encounters = session.execute(
            select(Encounter.resource, SourceRecord.resource_id).join(
                SourceRecord, SourceRecord.id == Encounter.source_record_id
            )
        ).all()
    assert len(encounters) == PAGES * 20
    assert all(resource["id"] == rid for resource, rid in encounters)
    assert all(resource for resource, _ in encounters)
