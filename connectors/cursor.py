"""Incremental cursors and de-duplication across pages and runs.

A cursor is an opaque string for callers; here it is JSON::

    {"v": 1, "since": "2026-01-02T03:04:05.678+00:00",
     "seen": {"Patient/123/4": "2026-01-02T03:04:06.000+00:00", ...}}

``since`` is the largest ``meta.lastUpdated`` seen minus the overlap window: the
next run searches ``_lastUpdated=ge<since>`` and so re-reads the boundary (a
resource committed late with an earlier timestamp is not missed). ``seen`` holds
the ``Type/id/versionId`` keys already delivered at or after ``since``, so that
re-read is not delivered twice. A bare FHIR instant is accepted as a cursor too.
See https://hl7.org/fhir/R4/search.html#lastUpdated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.config import as_object

CURSOR_VERSION = 1
#: Keys kept in a cursor at most. Past this, ``since`` moves up to the oldest kept key,
#: narrowing the overlap window instead of growing the cursor without bound (a key
#: dropped this way may be delivered once more, never lost).
MAX_CURSOR_KEYS = 20_000


def parse_instant(value: Any) -> datetime | None:
    """A FHIR ``instant``/``dateTime`` as an aware datetime (naive values count as UTC)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_instant(value: datetime) -> str:
    """A FHIR instant in UTC, milliseconds truncated (so never later than ``value``)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def resource_key(resource: dict[str, Any]) -> str | None:
    """``Type/id/versionId`` (falling back to ``meta.lastUpdated``), or None without an id."""
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not isinstance(rid, str):
        return None
    meta = as_object(resource.get("meta"))
    version = meta.get("versionId") or meta.get("lastUpdated") or ""
    return f"{rtype}/{rid}/{version}"


def last_updated(resource: dict[str, Any]) -> datetime | None:
    meta = resource.get("meta")
    return parse_instant(meta.get("lastUpdated")) if isinstance(meta, dict) else None


@dataclass
class Cursor:
    """Decoded cursor: ``since`` and the keys already delivered at or after it."""

    since: datetime | None = None
    #: key -> its ``meta.lastUpdated`` as :func:`format_instant` text (fixed width, UTC),
    #: which orders like the instants themselves and is formatted only once.
    seen: dict[str, str] = field(default_factory=dict)

    @classmethod
    def decode(cls, text: str | None) -> Cursor:
        """Parse a cursor string; ``ValueError`` for something that is not one of ours."""
        if not text:
            return cls()
        if not text.lstrip().startswith("{"):
            since = parse_instant(text.strip())
            if since is None:
                raise ValueError("cursor is neither JSON nor a FHIR instant")
            return cls(since=since)
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION:
            raise ValueError("unsupported cursor version")
        seen = {}
        for key, stamp in (data.get("seen") or {}).items():
            parsed = parse_instant(stamp)
            if parsed is not None:
                seen[str(key)] = format_instant(parsed)
        return cls(since=parse_instant(data.get("since")), seen=seen)

    def encode(self) -> str:
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "since": format_instant(self.since) if self.since else None,
                "seen": self.seen,
            },
            separators=(",", ":"),
        )

    @property
    def since_param(self) -> str | None:
        """``since`` formatted for a ``_lastUpdated=ge`` or ``_since`` parameter."""
        return format_instant(self.since) if self.since else None


class CursorTracker:
    """Decides which resources are new and computes the cursor after them.

    ``admit(key, stamp)`` is False for a key delivered before (in an earlier run
    inside the overlap window, or earlier in this run); otherwise it records the key.
    """

    def __init__(self, start: Cursor, overlap_s: float, *, max_keys: int = MAX_CURSOR_KEYS) -> None:
        self.start = start
        self.max_keys = max_keys
        self.overlap = timedelta(seconds=overlap_s)
        self._seen: dict[str, str] = dict(start.seen)
        self._delivered: set[str] = set()
        self._newest: datetime | None = None

    def admit(self, key: str | None, stamp: datetime | None) -> bool:
        if key is None:
            return True  # no identity: cannot be a duplicate we know of; the caller quarantines it
        if key in self._seen or key in self._delivered:
            return False
        self._delivered.add(key)
        if stamp is not None:
            self._seen[key] = format_instant(stamp)
            if self._newest is None or stamp > self._newest:
                self._newest = stamp
        return True

    def admit_resource(self, resource: dict[str, Any]) -> bool:
        return self.admit(resource_key(resource), last_updated(resource))

    def cursor(self) -> Cursor:
        """The cursor after everything admitted so far."""
        since = self.start.since
        if self._newest is not None:
            candidate = self._newest - self.overlap
            if since is None or candidate > since:
                since = candidate
        floor = format_instant(since) if since is not None else ""
        kept = {k: v for k, v in self._seen.items() if v >= floor}
        if len(kept) > self.max_keys:
            newest_first = sorted(kept.items(), key=lambda item: item[1], reverse=True)
            kept = dict(newest_first[: self.max_keys])
            since = parse_instant(min(kept.values()))
        return Cursor(since=since, seen=kept)

    def encode(self) -> str:
        return self.cursor().encode()
