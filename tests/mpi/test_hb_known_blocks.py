"""A page's block-key rows are read once (:class:`mpi.resolve._KnownBlocks`) and each of
its passes takes its keys' rows from there: they must be the rows the database would
return to the pass (:meth:`mpi.reads.Reads.block_members`), and a page cut into passes
must decide as its records one at a time did."""

from __future__ import annotations

import random
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from mpi.model import MatchModel
from mpi.reads import Reads
from mpi.resolve import _KnownBlocks, resolve_patients
from mpi.settings import MatchSettings
from store.bulk import BulkWriter
from tests.conftest import truncate_all
from tests.mpi.test_resolve_batch import _dataset, _outcome, _stage


def _sorted(rows: list[tuple[str, int, int | None]]) -> list[tuple[str, int, int]]:
    return sorted((key, size, -1 if member is None else member) for key, size, member in rows)


def test_rows_equal_the_database_rows_as_keys_are_inserted(session: Session) -> None:
    rng = random.Random(7)
    keys = [f"k{i}" for i in range(40)]
    bulk = BulkWriter(session)
    start = [(rng.choice(keys), rng.randint(1, 500)) for _ in range(300)]
    bulk.insert("block_key", ("key", "source_record_id"), start)
    reads = Reads(session)
    limit = 9
    page = sorted([*keys, "never-stored"])
    known = _KnownBlocks(reads, page, limit)
    for _ in range(6):  # a pass: its keys' rows, then it inserts its own
        asked = sorted(rng.sample(page, 15))
        for pass_limit in (limit, limit - 3, 0):
            expected = reads.block_members(asked, pass_limit)
            assert _sorted(known.rows(asked, pass_limit)) == _sorted(expected)
        added = [(rng.choice(page), rng.randint(501, 900)) for _ in range(rng.randint(0, 25))]
        bulk.insert("block_key", ("key", "source_record_id"), added)
        known.add(added)
    assert known.sizes == dict(reads.block_sizes(page))


@pytest.mark.parametrize("resent", [False, True])
def test_a_page_in_passes_with_small_blocks_decides_like_one_record_at_a_time(
    engine: Engine, session_factory: sessionmaker[Session], resent: bool
) -> None:
    """Blocks of at most 3 members: keys cross the limit from one pass to the next.
    ``resent``: the page also holds stored records again, in the middle (their pass reads
    the database, and so do the passes after it, whose keys it deleted and rewrote)."""
    data = _dataset()
    model, settings = MatchModel.default(), MatchSettings(max_block_size=3)

    def page(items: list[Any]) -> tuple[list[Any], list[Any]]:
        if not resent:
            return [], items
        half = len(items) // 2
        return items[:half], [*items[half : half + 30], *items[:5], *items[half + 30 :]]

    with session_factory() as session:
        before, items = page(_stage(session, data))
        one_by_one = [
            r
            for item in [*before, *items]
            for r in resolve_patients(session, [item], model=model, settings=settings)
        ]
        expected = _outcome(session, one_by_one)
        session.commit()
    truncate_all(engine)
    with session_factory() as session:
        before, items = page(_stage(session, data))
        batch = [
            r
            for item in before
            for r in resolve_patients(session, [item], model=model, settings=settings)
        ]
        batch += resolve_patients(session, items, model=model, settings=settings, chunk_size=9)
        session.commit()
        assert len(items) > 100
        assert _outcome(session, batch) == expected
