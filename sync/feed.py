"""What an HL7 v2 feed has sent: when its last message came, and how each was answered.

A pulled source has its runs to look at; a pushed ADT feed has none, and a feed that
went silent (the interface engine stopped, a firewall changed, the EHR's outbound queue
is stuck) shows nothing at all: no error, only patients whose admissions never arrive.
So each message the listener takes in is counted in the source's ``$feed`` state row
(``sync_cursor``, like the intake's ``$push:`` rows), in the transaction that takes the
message in and under the source's lock, so the counts never disagree with what was kept:

- ``last_message_at``: when the last message was answered with something kept or
  refused (an empty keep-alive, a message for a disabled source and one the database
  could not take are not counted: nothing about them could be kept);
- ``accepted`` (``AA``), ``quarantined`` (``AE``: kept with what could not be taken in)
  and ``rejected`` (``AR``: not an ADT message, nothing kept), by the original-mode
  answer whatever the mode the sender asked for (enhanced mode's ``CA`` covers the first
  two).

``askonce sources status`` and ``list``, the console, the admin API's source list and
``/metrics`` (``askonce_hl7v2_last_message_timestamp_seconds``,
``askonce_hl7v2_messages_total``) read it:
an alert on ``time() - askonce_hl7v2_last_message_timestamp_seconds`` catches a silent
feed. The row stays when the source's URL changes (it is not a read position) and goes
with the source.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from store.models import Base, SyncCursor
from store.types import as_utc, utcnow

#: ``sync_cursor.resource_type`` of a feed's state row.
FEED_STATE_KEY = "$feed"
#: How a message was answered -> the count it adds to.
_COUNTED = {"AA": "accepted", "AE": "quarantined", "AR": "rejected"}
COUNTS = tuple(_COUNTED.values())
_TABLE = Base.metadata.tables["sync_cursor"]
_ROW = (_TABLE.c.source_id == bindparam("sid")) & (_TABLE.c.resource_type == FEED_STATE_KEY)
#: Built once: building and hashing a statement per message costs more than running it.
_READ = select(_TABLE.c.cursor).where(_ROW)
_WRITE = update(_TABLE).where(_ROW).values(cursor=bindparam("cursor"), updated_at=bindparam("at"))
_CREATE = insert(_TABLE).values(
    source_id=bindparam("sid"),
    resource_type=FEED_STATE_KEY,
    cursor=bindparam("cursor"),
    updated_at=bindparam("at"),
)


@dataclass(frozen=True)
class Feed:
    """What one feed has sent so far."""

    source_id: int
    last_message_at: datetime | None
    accepted: int = 0
    quarantined: int = 0
    rejected: int = 0

    @property
    def messages(self) -> int:
        return self.accepted + self.quarantined + self.rejected

    def as_dict(self) -> dict[str, Any]:
        return {
            "last_message_at": self.last_message_at.isoformat() if self.last_message_at else None,
            "messages": self.messages,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "rejected": self.rejected,
        }


def _state(text: str | None, source_id: int) -> Feed:
    """A feed from its row's text (what cannot be read counts from zero again)."""
    try:
        state = json.loads(text or "{}")
    except ValueError:
        state = {}
    if not isinstance(state, dict):
        state = {}
    at = state.get("last_message_at")
    try:
        last = as_utc(datetime.fromisoformat(at)) if isinstance(at, str) else None
    except ValueError:
        last = None
    counts = {k: v for k in COUNTS if isinstance(v := state.get(k), int) and v >= 0}
    return Feed(source_id, last, **counts)


def note_message(
    session: Session, source_id: int, answer: str, *, now: datetime | None = None
) -> None:
    """Count a message answered ``answer`` (``AA``, ``AE`` or ``AR``) in ``session``, the
    transaction that takes it in; the caller holds the source's lock and commits. Two
    statements built once, on the session's connection: the ORM's load and flush, and
    statements built per call, cost a tenth of a message's time."""
    counted = _COUNTED.get(answer)
    if counted is None:
        raise ValueError(f"not an original-mode acknowledgment code: {answer!r}")
    connection = session.connection()
    stored = connection.execute(_READ, {"sid": source_id}).first()
    current = _state(stored[0] if stored is not None else None, source_id)
    state: dict[str, Any] = {k: getattr(current, k) for k in COUNTS}
    state[counted] += 1
    at = now or utcnow()
    state["last_message_at"] = at.isoformat()
    values = {"sid": source_id, "cursor": json.dumps(state), "at": at}
    connection.execute(_WRITE if stored is not None else _CREATE, values)


def read_feed(source_id: int, rows: Sequence[SyncCursor]) -> Feed:
    """A source's feed from its state rows already read (no message yet: zero counts)."""
    row = next((r for r in rows if r.resource_type == FEED_STATE_KEY), None)
    return _state(row.cursor, source_id) if row is not None else Feed(source_id, None)


def feeds(session: Session, source_id: int | None = None) -> dict[int, Feed]:
    """The feeds that have sent something, by source id (of one source, or of all)."""
    stmt = select(SyncCursor).where(SyncCursor.resource_type == FEED_STATE_KEY)
    if source_id is not None:
        stmt = stmt.where(SyncCursor.source_id == source_id)
    return {row.source_id: _state(row.cursor, row.source_id) for row in session.scalars(stmt)}
