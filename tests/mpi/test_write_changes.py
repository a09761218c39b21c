"""A golden record rewritten by a batch keeps its unchanged search-token rows, and ends
with exactly the tokens and provenance rows a full rewrite gives (SQLite and PostgreSQL);
survivorship's shared rankings rank like one sort per field."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_mapping import parse_patient, search_tokens
from mpi import resolve_patients
from mpi.settings import MatchSettings
from mpi.storage import member_records
from mpi.survivorship import MemberRecord, build_golden
from store.models import FieldProvenance, GoldenPatient, GoldenSearchToken, SourceRecord
from tests.mpi.helpers import add_record, add_source, fhir_patient


def _tokens(session: Session, golden_id: str) -> dict[int, tuple[Any, ...]]:
    rows = session.execute(
        select(
            GoldenSearchToken.id,
            GoldenSearchToken.param,
            GoldenSearchToken.system,
            GoldenSearchToken.value,
        ).where(GoldenSearchToken.golden_id == golden_id)
    )
    return {row_id: (p, s, v) for row_id, p, s, v in rows}


def _provenance(session: Session, golden_id: str) -> dict[int, tuple[Any, ...]]:
    rows = session.execute(
        select(
            FieldProvenance.id,
            FieldProvenance.field,
            FieldProvenance.value,
            FieldProvenance.source_record_id,
            FieldProvenance.rule,
            FieldProvenance.observed_at,
        ).where(FieldProvenance.golden_id == golden_id)
    )
    return {
        row_id: (f, json.dumps(v, sort_keys=True), r, rule, at)
        for row_id, f, v, r, rule, at in rows
    }


def _check_full_rewrite(session: Session, golden_id: str) -> None:
    """The stored rows are those a rewrite from scratch would write."""
    golden = session.get(GoldenPatient, golden_id)
    assert golden is not None
    assert Counter(_tokens(session, golden_id).values()) == Counter(
        tuple(t) for t in search_tokens(golden.resource)
    )
    members = member_records(session, golden_id=golden_id)
    _, provenance = build_golden(golden_id, members, MatchSettings().survivorship)
    expected = Counter(
        (p.field, json.dumps(p.value, sort_keys=True), p.record_id, p.rule, p.observed_at)
        for p in provenance
    )
    assert Counter(_provenance(session, golden_id).values()) == expected


def test_a_batch_writes_only_the_rows_that_changed(session: Session) -> None:
    a, b, c = (add_source(session, name, rank) for name, rank in (("a", 50), ("b", 60), ("c", 40)))
    person = {"ssn": "512-34-6789"}
    [first] = resolve_patients(
        session, [add_record(session, a, fhir_patient("a1", email="a1@example.org", **person))]
    )
    golden_id = first.golden_id
    session.flush()
    _check_full_rewrite(session, golden_id)
    tokens = _tokens(session, golden_id)

    # A second record of the person with another phone: one token more, none rewritten.
    second = fhir_patient("b1", given="Bob", phone="415-555-0101", **person)
    [joined] = resolve_patients(session, [add_record(session, b, second)])
    assert joined.golden_id == golden_id and not joined.created
    session.flush()
    _check_full_rewrite(session, golden_id)
    after = _tokens(session, golden_id)
    assert tokens.items() <= after.items()  # same ids, same values
    assert len(after) > len(tokens)

    # A third, lower-ranked record adds a name and an e-mail address.
    tokens = _tokens(session, golden_id)
    third = fhir_patient("c1", given="Robbie", email="rob@example.org", **person)
    [joined] = resolve_patients(session, [add_record(session, c, third)])
    assert joined.golden_id == golden_id
    session.flush()
    _check_full_rewrite(session, golden_id)
    assert tokens.items() <= _tokens(session, golden_id).items()

    # The first record drops its e-mail address at its source: that token goes.
    tokens = _tokens(session, golden_id)
    changed = fhir_patient("a1", given="Robert", family="Whitfield", **person)
    row = session.scalar(select(SourceRecord).where(SourceRecord.resource_id == "a1"))
    assert row is not None
    patient = parse_patient(changed)
    row.raw, row.normalized = changed, patient.to_dict()
    row.content_hash = hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()
    session.flush()
    [refreshed] = resolve_patients(session, [(row, patient)])
    assert refreshed.golden_id == golden_id
    session.flush()
    _check_full_rewrite(session, golden_id)
    after = _tokens(session, golden_id)
    assert [tokens[i] for i in set(tokens) - set(after)] == [("email", None, "a1@example.org")]
    assert set(tokens) & set(after), "the other tokens are kept"


def _reference_golden(
    members: list[MemberRecord], rules: dict[str, tuple[str, ...]]
) -> dict[str, tuple[list[int], str]]:
    """Per field: the members' order and deciding rule, each field sorted on its own (as
    build_golden did before fields with the same rules shared a ranking)."""

    def value(m: MemberRecord, field: str, rule: str) -> Any:
        if rule == "confirmed":
            return not m.confirmed
        if rule == "trust":
            return -m.trust_rank
        if rule == "recency":
            return -(m.observed_at.timestamp() if m.observed_at else 0.0)
        if field == "birthDate":
            return -len(m.patient.birth_date or "")
        if field == "name":
            return -sum(bool(n.family) + bool(n.given) for n in m.patient.names)
        return 0

    out = {}
    for field in ("name", "birthDate", "gender", "identifier", "telecom", "address", "other"):
        order = rules.get(field, ("trust", "recency"))
        ranked = sorted(members, key=lambda m: (*(value(m, field, r) for r in order), m.record_id))
        rule = "only-source" if len(ranked) < 2 else "oldest-record"
        for r in order if len(ranked) >= 2 else ():
            if value(ranked[0], field, r) != value(ranked[1], field, r):
                rule = r
                break
        out[field] = ([m.record_id for m in ranked], rule)
    return out


def test_shared_rankings_rank_like_one_sort_per_field() -> None:
    rng = random.Random(7)
    rules = MatchSettings().survivorship
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for _ in range(200):
        members = [
            MemberRecord(
                record_id=i,
                patient=parse_patient(
                    fhir_patient(
                        f"p{i}",
                        given=rng.choice(["Robert", None]),
                        birth=rng.choice(["1970-03-14", "1970", None]),
                        phone=rng.choice(["415-555-0101", "415-555-0102"]),
                    )
                ),
                trust_rank=rng.choice([40, 50]),
                observed_at=rng.choice([None, start, start + timedelta(days=1)]),
                confirmed=rng.random() < 0.3,
            )
            for i in range(rng.randint(1, 4))
        ]
        reference = _reference_golden(members, rules)
        golden, provenance = build_golden("g", members, rules)
        for entry in provenance:
            field = "other" if entry.field == "deceased" else entry.field
            assert entry.rule == reference[field][1]
        by_id = {m.record_id: m for m in members}
        assert golden.telecom[0] == by_id[reference["telecom"][0][0]].patient.telecom[0]
        births = [by_id[r].patient.birth_date for r in reference["birthDate"][0]]
        assert golden.birth_date == next((b for b in births if b), None)
