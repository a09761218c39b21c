"""Search tokens of golden records rewritten by save_many: only the changed rows go and
come, on both backends, including records that hold a token more than once."""

from __future__ import annotations

import random
from collections import Counter

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from store.golden import GoldenPatientRepository, GoldenWrite, SearchToken
from store.models import GoldenSearchToken

POOL: list[SearchToken] = [
    ("family", None, "muller"),
    ("name", None, "muller"),
    ("given", None, "anna"),
    ("name", None, "anna"),
    ("identifier", "urn:mrn:a", "123"),
    ("identifier", "urn:mrn:b", "123"),
    ("identifier", None, "123"),
    ("phone", None, "5551234567"),
    ("email", None, "a@example.org"),
    ("address-postalcode", None, "12345"),
]


def _write(golden_id: str, tokens: list[SearchToken], version: int) -> GoldenWrite:
    return GoldenWrite(golden_id, {"resourceType": "Patient"}, tokens, "active", None, version)


def _rows(session: Session) -> dict[str, dict[int, SearchToken]]:
    out: dict[str, dict[int, SearchToken]] = {}
    for token_id, golden_id, p, s, v in session.execute(
        select(
            GoldenSearchToken.id,
            GoldenSearchToken.golden_id,
            GoldenSearchToken.param,
            GoldenSearchToken.system,
            GoldenSearchToken.value,
        )
    ):
        out.setdefault(golden_id, {})[token_id] = (p, s, v)
    return out


def test_rewritten_records_keep_unchanged_rows_and_hold_exactly_their_tokens(
    session: Session,
) -> None:
    rng = random.Random(7)
    repo = GoldenPatientRepository(session)
    ids = [f"g-{i}" for i in range(60)]
    first = {g: rng.sample(POOL, rng.randint(0, len(POOL))) for g in ids}
    repo.save_many([_write(g, first[g], 0) for g in ids])
    session.commit()
    before = _rows(session)
    second = {g: rng.sample(POOL, rng.randint(0, len(POOL))) for g in ids}
    repo.save_many([_write(g, second[g], 1) for g in ids])
    session.commit()
    after = _rows(session)
    for g in ids:
        now = after.get(g, {})
        assert Counter(now.values()) == Counter(second[g])
        kept = {i: t for i, t in before.get(g, {}).items() if t in second[g]}
        # A token the record had before keeps its row; only the others are new rows.
        assert {i: now[i] for i in kept} == kept
        assert len(now) - len(kept) == len(set(second[g]) - set(first[g]))


def test_a_token_stored_twice_is_left_once_and_a_token_listed_twice_is_stored_twice(
    session: Session,
) -> None:
    repo = GoldenPatientRepository(session)
    anna = [POOL[0], POOL[2], POOL[4]]
    repo.save_many([_write("g-anna", anna, 0), _write("g-ben", [POOL[7]], 0)])
    session.commit()
    # Rows as an older writer may have left them: the same token twice.
    session.execute(
        text(
            "INSERT INTO golden_search_token (golden_id, param, system, value) "
            "VALUES ('g-anna', 'family', NULL, 'muller'), ('g-anna', 'phone', NULL, '1')"
        )
    )
    session.commit()
    stored = _rows(session)["g-anna"]
    family_ids = [i for i, t in stored.items() if t == POOL[0]]
    assert len(family_ids) == 2
    twice = [POOL[0], POOL[2], POOL[9], POOL[9]]
    repo.save_many([_write("g-anna", twice, 1), _write("g-ben", [POOL[7], POOL[8]], 1)])
    session.commit()
    rows = _rows(session)
    assert Counter(rows["g-anna"].values()) == Counter(twice)
    # One of the two family rows stays; the given-name row is untouched.
    assert len([i for i, t in rows["g-anna"].items() if t == POOL[0] and i in family_ids]) == 1
    assert [i for i, t in rows["g-anna"].items() if t == POOL[2]] == [
        i for i, t in stored.items() if t == POOL[2]
    ]
    assert Counter(rows["g-ben"].values()) == Counter([POOL[7], POOL[8]])
