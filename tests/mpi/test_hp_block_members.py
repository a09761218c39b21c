"""Reads.block_members gives the rows the previous statements gave: on PostgreSQL one
index scan per distinct key (members gathered into an array, the whole list at once)
instead of two joins of ``block_key`` on ``key = ANY(list)`` in lists of 5,000 keys."""

from __future__ import annotations

import random
from collections import Counter

from sqlalchemy.orm import Session

from mpi.reads import _BLOCK_MEMBERS, Reads
from store.bulk import BulkWriter, rows_in

#: The statement PostgreSQL ran before (kept here as the reference).
_PREVIOUS_PG = (
    "SELECT s.key, s.n, b.source_record_id FROM "
    "(SELECT key, count(*) AS n FROM block_key WHERE key {in} GROUP BY key) s "
    "LEFT JOIN LATERAL (SELECT m.source_record_id FROM block_key m "
    "WHERE m.key = s.key AND s.n <= {p}) b ON true"
)


def _previous(reads: Reads, keys: list[str], limit: int) -> list[tuple[str, int, int | None]]:
    template = _PREVIOUS_PG if reads.postgresql else _BLOCK_MEMBERS
    return rows_in(reads.dbapi, reads.postgresql, template, keys, limit)


def _fill(session: Session, rng: random.Random, keys: list[str]) -> None:
    """Block keys of 0 to 12 members each (records 1-4000; a record may hold a key
    twice, as nothing forbids it)."""
    rows = [
        (key, rng.randint(1, 4000))
        for key in keys
        for _ in range(rng.choice((0, 0, 1, 2, 3, 5, 8, 12)))
    ]
    rng.shuffle(rows)
    BulkWriter(session).insert("block_key", ("key", "source_record_id"), rows)


def test_the_same_rows_as_the_previous_statement(session: Session) -> None:
    rng = random.Random(6)
    stored = [f"k{rng.randrange(16**8):08x}" for _ in range(7000)]
    odd = ["a\x1fb", "c\x1ed", "", "  spaced ", "ünï\\code", "x'y\"z"]
    _fill(session, rng, stored + odd)
    reads = Reads(session)
    absent = [f"absent-{i}" for i in range(300)]
    lists = [
        stored,  # more keys than one list of the previous statement took
        stored[:1],
        odd,  # separators in keys: sent as a list, not joined
        odd[2:],
        stored[:200] + stored[:50] + absent,  # repeated and absent keys
        absent,
    ]
    for keys in lists:
        for limit in (0, 1, 3, 8, 200):
            got = reads.block_members(keys, limit)
            assert Counter(got) == Counter(_previous(reads, keys, limit))
    assert reads.block_members([], 5) == []


def test_a_key_over_the_limit_gives_its_size_only(session: Session) -> None:
    BulkWriter(session).insert(
        "block_key",
        ("key", "source_record_id"),
        [("big", r) for r in range(1, 30)] + [("small", 7), ("small", 9)],
    )
    reads = Reads(session)
    rows = reads.block_members(["big", "small", "none"], 28)
    assert sorted(rows, key=repr) == [("big", 29, None), ("small", 2, 7), ("small", 2, 9)]
    rows = reads.block_members(["big", "small"], 29)
    assert Counter(rows) == Counter([("big", 29, r) for r in range(1, 30)]) + Counter(
        [("small", 2, 7), ("small", 2, 9)]
    )
