"""NDJSON: one FHIR resource per line (https://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-output-file-format).

:func:`read_ndjson` turns lines into resources without holding a file in memory;
a line that is not a JSON object becomes an OperationOutcome naming the file and
line number (never its content). :class:`NdjsonDirectorySource` reads a folder of
``<Type>.ndjson`` files (also ``<Type>.<n>.ndjson``), the way bulk exports are delivered.

Its cursor records each fully read file by name, size and modification time, plus
the line reached in the current one, so a re-run skips what was already read
and resumes a half-read file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from connectors.config import (
    Capabilities,
    Page,
    RawLine,
    ResourceCapability,
    SourceConfig,
    SourceOptions,
)
from connectors.errors import PermanentError
from connectors.source import Source

logger = logging.getLogger(__name__)

NDJSON_SUFFIX = ".ndjson"
CURSOR_VERSION = 1
#: A run of this many digits may be an integer beyond 64 bits, which orjson reads as a
#: float where ``json`` keeps an exact int: such lines go to ``json``. Found by mapping
#: every digit to "0" and looking for the run (a regular expression costs 3x orjson).
_LONG_DIGITS = b"0" * 19
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)


def loads_line(raw: bytes) -> Any:
    """``json.loads(raw)``, through orjson (3-4x faster) when that gives the same value.

    orjson refuses what ``json`` extends JSON with (NaN, Infinity, lone surrogates, a
    UTF-8 BOM): those lines, and any error, go to ``json`` (its value or its error), as
    do lines with a 19-digit run (see :data:`_LONG_DIGITS`)."""
    if type(raw) is bytes and raw.translate(_DIGITS_TO_ZERO).find(_LONG_DIGITS) == -1:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def line_outcome(where: str, line_number: int, problem: str) -> dict[str, Any]:
    """An OperationOutcome for an unreadable line (position only, no content)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "structure",
                "diagnostics": f"{where} line {line_number}: {problem}",
            }
        ],
    }


def parse_line(
    raw: bytes, where: str, line_number: int
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(resource, None)`` for a JSON object, ``(None, outcome)`` otherwise, ``(None, None)``
    for a blank line."""
    if not raw.strip():
        return None, None
    try:
        value = loads_line(raw)
    except (ValueError, UnicodeDecodeError):
        return None, line_outcome(where, line_number, "not valid JSON")
    if isinstance(value, dict):
        return value, None
    return None, line_outcome(where, line_number, "not a JSON object")


def read_ndjson(
    lines: Iterable[bytes], where: str, *, first_line: int = 1
) -> Iterator[tuple[int, dict[str, Any] | None, dict[str, Any] | None]]:
    """Yield ``(line_number, resource, outcome)``: exactly one of the two is set.

    Blank lines are skipped. ``first_line`` numbers the first line given.
    """
    for number, raw in enumerate(lines, start=first_line):
        resource, outcome = parse_line(raw, where, number)
        if resource is not None or outcome is not None:
            yield number, resource, outcome


def decode_lines(page: Page) -> Page:
    """``page`` with its :attr:`Page.lines` decoded into resources and, for the lines that
    are not JSON objects, OperationOutcomes (:func:`parse_line`)."""
    resources = list(page.resources)
    outcomes = list(page.outcomes)
    for line, where, number in page.lines:
        resource, outcome = parse_line(line, where, number)
        if resource is not None:
            resources.append(resource)
        elif outcome is not None:
            outcomes.append(outcome)
    return Page(page.resource_type, resources, page.cursor, page.deleted, outcomes)


@dataclass
class _DirCursor:
    done: dict[str, list[int]] = field(default_factory=dict)  # name -> [size, mtime_ns]
    current: str | None = None
    current_stamp: list[int] | None = None
    line: int = 0

    @classmethod
    def decode(cls, text: str | None) -> _DirCursor:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            if data.get("v") != CURSOR_VERSION or data.get("kind") != "ndjson":
                raise ValueError("not an ndjson cursor")
            return cls(
                done={str(k): list(v) for k, v in (data.get("done") or {}).items()},
                current=data.get("current"),
                current_stamp=data.get("current_stamp"),
                line=int(data.get("line") or 0),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise PermanentError("stored cursor is not one this connector wrote") from exc

    def encode(self) -> str:
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "kind": "ndjson",
                "done": self.done,
                "current": self.current,
                "current_stamp": self.current_stamp,
                "line": self.line,
            },
            separators=(",", ":"),
            sort_keys=True,
        )


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


class NdjsonDirectorySource(Source):
    """A folder of ``<Type>.ndjson`` files."""

    def __init__(self, config: SourceConfig, options: SourceOptions) -> None:
        super().__init__(config, options)
        self.folder = Path(config.base_url)

    def files_for(self, resource_type: str) -> list[Path]:
        if not self.folder.is_dir():
            raise PermanentError(f"NDJSON folder {self.folder} does not exist")
        named = [self.folder / f"{resource_type}{NDJSON_SUFFIX}"]
        numbered = sorted(self.folder.glob(f"{resource_type}.*{NDJSON_SUFFIX}"))
        return [p for p in [*named, *numbered] if p.is_file()]

    def check(self) -> Capabilities:
        """The resource types that have files in the folder."""
        if not self.folder.is_dir():
            raise PermanentError(f"NDJSON folder {self.folder} does not exist")
        types = {p.name.split(".", 1)[0] for p in self.folder.glob(f"*{NDJSON_SUFFIX}")}
        empty = ResourceCapability(frozenset(), frozenset({"read"}), frozenset())
        return Capabilities(
            fhir_version=None,
            software=None,
            resources={t: empty for t in sorted(types)},
            system_operations=frozenset(),
            system_interactions=frozenset(),
        )

    def stream(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        for page in self.stream_lines(resource_type, cursor):
            yield decode_lines(page)

    def stream_lines(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        """Pages of ``options.page_size`` non-blank lines, undecoded (:attr:`Page.lines`);
        :meth:`stream` decodes them (:func:`decode_lines`)."""
        state = _DirCursor.decode(cursor)
        page: list[RawLine] = []
        for path in self.files_for(resource_type):
            stamp = _stamp(path)
            if state.done.get(path.name) == stamp:
                continue
            skip = state.line if state.current == path.name and state.current_stamp == stamp else 0
            state.current, state.current_stamp, state.line = path.name, stamp, skip
            name = path.name
            with path.open("rb") as handle:
                for number, line in enumerate(handle, start=1):
                    if number <= skip or not line.strip():
                        continue
                    state.line = number
                    page.append((line, name, number))
                    if len(page) >= self.options.page_size:
                        yield Page(resource_type, [], state.encode(), lines=page)
                        page = []
            state.done[name] = stamp
            state.current, state.current_stamp, state.line = None, None, 0
        yield Page(resource_type, [], state.encode(), lines=page)

    def fetch(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The last line for that id across the type's files (a linear scan)."""
        found: dict[str, Any] | None = None
        for path in self.files_for(resource_type):
            with path.open("rb") as handle:
                for _, resource, _ in read_ndjson(handle, path.name):
                    if resource is not None and resource.get("id") == resource_id:
                        found = resource
        return found

    def close(self) -> None:
        """Nothing to release: files are opened and closed per stream."""
