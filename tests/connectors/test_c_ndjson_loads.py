"""``loads_line`` (orjson with a ``json`` fallback) reads every NDJSON line exactly as
``json.loads`` does: same values, same JSON types (an int stays an int), same errors."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.ndjson import loads_line, parse_line
from tools.ehrgen import generate


def same(a: Any, b: Any) -> bool:
    """Equal values of identical types all the way down (1 == 1.0 == True are not the same)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def outcome(line: bytes) -> tuple[str, Any]:
    try:
        return "value", loads_line(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return "error", type(exc)


def reference(line: bytes) -> tuple[str, Any]:
    try:
        return "value", json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return "error", type(exc)


def assert_same_reading(line: bytes) -> None:
    got, want = outcome(line), reference(line)
    assert got[0] == want[0], line
    if got[0] == "value":
        assert same(got[1], want[1]), line


EDGE_LINES = [
    b"{}",
    b"[]",
    b'{"a":NaN}',
    b'{"a":Infinity,"b":-Infinity}',
    b"[1e400]",
    b'{"a":1,"a":2}',
    b'"\\ud800"',
    b'{"id":"\\udfff\\ud800"}',
    b"123456789012345678901234567890",
    b'{"value":12345678901234567890}',
    b'{"value":9223372036854775807}',
    b'{"value":-9223372036854775808}',
    b'{"value":18446744073709551615}',
    b'{"value":1234567890123456789.5}',
    b'{"value":0.1000000000000000055511151231257827}',
    b'{"a":-0.0,"b":0.0,"c":1.0,"d":1E2,"e":1e-7}',
    b"\xef\xbb\xbf{}",
    b'"\x00"',
    b'{"a":"\\u0000"}',
    b'{"a":"caf\xc3\xa9 \\u00e9 \\n \\t"}',
    b'{"a":"\xff"}',
    b"{'a':1}",
    b'{"a":1,}',
    b"{} {}",
    b"  {}  ",
    b"{}\n",
    b"tru",
    b"null",
    b"true",
    b'{"deep":' + b"[" * 200 + b"]" * 200 + b"}",
]


@pytest.mark.parametrize("line", EDGE_LINES)
def test_edge_lines_read_as_json_reads_them(line: bytes) -> None:
    assert_same_reading(line)


def test_generated_resources_read_as_json_reads_them() -> None:
    generated = generate(60, seed=5, encounters_per_patient=2)
    rng = random.Random(5)
    count = 0
    for resources in (
        *generated.patients_by_source.values(),
        *generated.encounters_by_source.values(),
    ):
        for resource in resources:
            for ensure_ascii in (True, False):
                line = json.dumps(resource, ensure_ascii=ensure_ascii).encode()
                assert_same_reading(line)
                # A byte cut or flipped: mostly invalid JSON, which must fail the same way.
                cut = line[: rng.randrange(len(line))]
                assert_same_reading(cut)
                count += 1
    assert count > 300


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=600, deadline=None)
@given(json_values, st.booleans())
def test_any_json_value_reads_as_json_reads_it(value: Any, ensure_ascii: bool) -> None:
    assert_same_reading(json.dumps(value, ensure_ascii=ensure_ascii).encode())


def test_text_lines_are_read_by_json() -> None:
    assert same(loads_line('{"a": 12345678901234567890123}'), {"a": 12345678901234567890123})  # type: ignore[arg-type]


def test_parse_line_still_reports_position_only() -> None:
    resource, problem = parse_line(b'{"resourceType": NaN', "Patient.ndjson", 7)
    assert resource is None
    assert problem is not None
    assert problem["issue"][0]["diagnostics"] == "Patient.ndjson line 7: not valid JSON"
    resource, problem = parse_line(b'{"value": 123456789012345678901234567890}', "x", 1)
    assert resource == {"value": 123456789012345678901234567890}
    assert problem is None
