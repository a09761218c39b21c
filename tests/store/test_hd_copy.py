"""store.bulk: PostgreSQL inserts of many rows without RETURNING go through COPY, whose
text the writer builds itself; every value reads back as the INSERT stored it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from store.bulk import COPY_MIN_ROWS, BulkWriter, copy_text
from store.models import FieldProvenance, GoldenSearchToken, Link

#: strs that COPY's text format must escape, and others that need nothing.
NASTY = (
    "back\\slash",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "\\N",
    "\\.",
    "ünïcødé ✓",
    "unit\x1fsep",
    "",
    " spaced ",
)
T0 = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)


def test_copy_text_escapes_and_renders_each_type() -> None:
    arrays = [["a\\b", "c\td", None], [1, None, -3], [True, False, None], [None, None, None]]
    assert copy_text(arrays, [None] * 4) == (
        "a\\\\b\t1\tt\t\\N\nc\\td\t\\N\tf\t\\N\n\\N\t-3\t\\N\t\\N\n"
    )


def test_copy_text_leaves_to_the_insert_what_it_would_render_otherwise() -> None:
    assert copy_text([["ab", "abc"]], [2]) is None  # the INSERT's cast truncates
    assert copy_text([["ab", "abc"]], [3]) is not None
    assert copy_text([[1, "1"]], [None]) is None  # mixed types
    assert copy_text([[T0]], [None]) is None  # psycopg's dumpers
    assert copy_text([[0.5]], [None]) is None
    assert copy_text([["nul\x00"]], [None]) is None
    assert copy_text([[{"a": 1}]], [None]) is None


def _rows(count: int) -> list[tuple[str, str, str | None, str]]:
    return [
        (f"g{i % 7}", "name" if i % 2 else "phone", None if i % 3 else NASTY[i % 4], NASTY[i % 10])
        for i in range(count)
    ]


def test_many_rows_read_back_as_written(engine: Engine) -> None:
    count = COPY_MIN_ROWS + 5
    tokens = _rows(count)
    values = [{"text": NASTY[i % 10], "n": i, "nested": ["\\", "\n", None]} for i in range(count)]
    provenance = [
        (
            f"g{i}",
            f"field{i % 3}",
            BulkWriter.json(values[i]),
            None if i % 5 == 0 else i,
            "trust",
            None if i % 4 == 0 else T0 + timedelta(minutes=i),
        )
        for i in range(count)
    ]
    links = [
        (i, f"g{i}", "certain", [0.1, -2.5, 1e300, None][i % 4], i % 2 == 0, "{}")
        for i in range(count)
    ]
    # The tokens take the COPY path on PostgreSQL (the writer's own text, no fallback);
    # provenance and links (JSON, floats, timestamps) the INSERT.
    assert copy_text([list(column) for column in zip(*tokens)], [None] * 4)
    with Session(engine) as session:
        writer = BulkWriter(session)
        writer.insert("golden_search_token", ("golden_id", "param", "system", "value"), tokens)
        writer.insert(
            "field_provenance",
            ("golden_id", "field", "value", "source_record_id", "rule", "observed_at"),
            provenance,
            json_columns={"value"},
        )
        writer.insert(
            "link",
            (
                "source_record_id",
                "golden_id",
                "grade",
                "score",
                "flagged",
                "explanation",
                "method",
                "created_at",
                "updated_at",
            ),
            [(*row, "AUTO", writer.timestamp(T0), writer.timestamp(T0)) for row in links],
            json_columns={"explanation"},
        )
        session.commit()
        stored_tokens = session.execute(
            select(
                GoldenSearchToken.golden_id,
                GoldenSearchToken.param,
                GoldenSearchToken.system,
                GoldenSearchToken.value,
            ).order_by(GoldenSearchToken.id)
        ).all()
        assert [tuple(row) for row in stored_tokens] == tokens
        stored = session.execute(
            select(
                FieldProvenance.golden_id,
                FieldProvenance.value,
                FieldProvenance.source_record_id,
                FieldProvenance.observed_at,
            ).order_by(FieldProvenance.id)
        ).all()
        assert [tuple(row) for row in stored] == [
            (row[0], json.loads(row[2]), row[3], row[5]) for row in provenance
        ]
        scores = session.execute(
            select(Link.source_record_id, Link.score, Link.flagged).order_by(Link.id)
        ).all()
        assert [tuple(row) for row in scores] == [(row[0], row[3], row[4]) for row in links]


def test_over_long_values_are_truncated_as_the_insert_did(engine: Engine) -> None:
    """A value longer than its VARCHAR column keeps the INSERT's behaviour (PostgreSQL's
    cast truncates it; SQLite keeps it whole) instead of failing a COPY."""
    rows = _rows(COPY_MIN_ROWS)
    rows[3] = ("g3", "name", None, "x" * 300)
    with Session(engine) as session:
        BulkWriter(session).insert(
            "golden_search_token", ("golden_id", "param", "system", "value"), rows
        )
        session.commit()
        long = session.scalar(
            select(GoldenSearchToken.value)
            .where(GoldenSearchToken.golden_id == "g3")
            .where(GoldenSearchToken.value.like("xx%"))
        )
    postgresql = engine.dialect.name == "postgresql"
    assert long == "x" * (255 if postgresql else 300)
