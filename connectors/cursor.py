"""Incremental cursors and de-duplication across pages, resumptions and runs.

A cursor is an opaque string for callers; here it is JSON::

    {"v": 1, "since": "2026-01-02T03:04:05.678Z",
     "seen": {"Patient/123/4": "2026-01-02T03:04:06.000Z", ...},
     "resume": {...}}

``since`` is where a pass starts: the largest ``meta.lastUpdated`` seen by the
previous pass minus the overlap window, so the next pass searches
``_lastUpdated=ge<since>`` and re-reads the boundary (a resource committed late
with an earlier timestamp is not missed; see
https://hl7.org/fhir/R4/search.html#lastUpdated). ``seen`` holds the
``Type/id/versionId`` keys already delivered inside that window, so the re-read
is not delivered twice.

``resume`` is present only in the cursors of pages in the middle of a pass: it
lets a caller that stops after any page (and stores that page's cursor) reopen
the stream where it left off, without losing or re-delivering anything. Its
content belongs to the source kind (a position in a sorted search, the keys
delivered so far, a Bulk Data job and file offset). The last page of a pass
carries a cursor without ``resume``. A bare FHIR instant is accepted as a cursor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.config import as_object

CURSOR_VERSION = 1
#: Window keys kept in a cursor at most. Past this, ``since`` moves up to the oldest
#: kept key, narrowing the overlap window instead of growing the cursor without bound
#: (a key dropped this way may be delivered once more, never lost).
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
    """A FHIR instant in UTC, milliseconds truncated (so never later than ``value``).

    Fixed width, so these strings order like the instants themselves.
    """
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
    return parse_instant(as_object(resource.get("meta")).get("lastUpdated"))


@dataclass
class Cursor:
    """Decoded cursor: where the pass starts, window keys, and mid-pass state."""

    since: datetime | None = None
    #: key -> :func:`format_instant` text of its ``meta.lastUpdated`` (formatted once).
    seen: dict[str, str] = field(default_factory=dict)
    resume: dict[str, Any] | None = None

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
        for key, stamp in as_object(data.get("seen")).items():
            parsed = parse_instant(stamp)
            if parsed is not None:
                seen[str(key)] = format_instant(parsed)
        resume = data.get("resume")
        return cls(
            since=parse_instant(data.get("since")),
            seen=seen,
            resume=resume if isinstance(resume, dict) else None,
        )

    def encode(self) -> str:
        data: dict[str, Any] = {
            "v": CURSOR_VERSION,
            "since": format_instant(self.since) if self.since else None,
            "seen": self.seen,
        }
        if self.resume is not None:
            data["resume"] = self.resume
        return json.dumps(data, separators=(",", ":"))

    @property
    def since_param(self) -> str | None:
        """``since`` formatted for a ``_lastUpdated=ge`` or ``_since`` parameter."""
        return format_instant(self.since) if self.since else None


class CursorTracker:
    """Decides which resources are new in a pass and computes cursors after them.

    ``admit(key, stamp)`` is False for a key delivered before (in an earlier pass
    inside the overlap window, or earlier in this pass, including before a
    resumption); otherwise it records the key. Every stamp observed, new or not,
    moves the pass's newest ``lastUpdated``.
    """

    def __init__(self, start: Cursor, overlap_s: float, *, max_keys: int = MAX_CURSOR_KEYS) -> None:
        self.start = start
        self.overlap = timedelta(seconds=overlap_s)
        self.max_keys = max_keys
        resume = start.resume or {}
        self._seen: dict[str, str] = dict(start.seen)
        self._delivered: set[str] = {str(k) for k in resume.get("delivered") or []}
        self._newest: datetime | None = parse_instant(resume.get("newest"))

    @property
    def newest(self) -> datetime | None:
        return self._newest

    def observe(self, stamp: datetime | None) -> None:
        if stamp is not None and (self._newest is None or stamp > self._newest):
            self._newest = stamp

    def admit(self, key: str | None, stamp: datetime | None) -> bool:
        self.observe(stamp)
        if key is None:
            return True  # no identity: cannot be a duplicate we know of; the caller quarantines it
        if key in self._seen or key in self._delivered:
            return False
        self._delivered.add(key)
        if stamp is not None:
            self._seen[key] = format_instant(stamp)
        return True

    def admit_resource(self, resource: dict[str, Any]) -> bool:
        return self.admit(resource_key(resource), last_updated(resource))

    def delivered_in_pass(self) -> set[str]:
        return set(self._delivered)

    def forget_delivered(self) -> None:
        """Stop carrying this pass's keys (their part of the pass cannot be read again)."""
        self._delivered.clear()

    def _window(self, since: datetime | None) -> tuple[datetime | None, dict[str, str]]:
        floor = format_instant(since) if since is not None else ""
        kept = {k: v for k, v in self._seen.items() if v >= floor}
        if len(kept) > self.max_keys:
            newest_first = sorted(kept.items(), key=lambda item: item[1], reverse=True)
            kept = dict(newest_first[: self.max_keys])
            since = parse_instant(min(kept.values()))
        return since, kept

    def final(self) -> Cursor:
        """The cursor at the end of a pass: newest minus overlap, never before the pass start."""
        since = self.start.since
        if self._newest is not None:
            candidate = self._newest - self.overlap
            if since is None or candidate > since:
                since = candidate
        since, kept = self._window(since)
        return Cursor(since=since, seen=kept)

    def position(self, state: dict[str, Any], *, with_delivered: bool) -> Cursor:
        """A mid-pass cursor: the pass start, the window keys so far, and ``state`` to resume.

        ``with_delivered`` adds every key delivered in this pass (for sources that
        cannot resume at a position and must skip what was delivered instead).
        """
        window_since = self._newest - self.overlap if self._newest is not None else None
        _, kept = self._window(window_since)
        resume = dict(state)
        if self._newest is not None:
            resume["newest"] = format_instant(self._newest)
        if with_delivered:
            resume["delivered"] = sorted(self._delivered)
        return Cursor(since=self.start.since, seen=kept, resume=resume)
