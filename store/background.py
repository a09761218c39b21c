"""One statement at a time on a transaction's connection, in a thread of its own.

sqlite3 (inside ``sqlite3_step``) and psycopg (waiting for the server) release the GIL
while a statement runs, so a statement that nothing read before it finishes can run
while the caller's thread goes on with Python work: a page's new Encounters while the
next ones are validated (:mod:`sync.encounters`), a pass's block keys while its records
are decided (:mod:`mpi.resolve`). That pays only where the statement spends its time
without the GIL: one ``INSERT … SELECT`` of many rows, not an ``executemany``, whose
thread needs the GIL back for every row (and waits up to the switch interval, 5 ms, for
it while the caller computes).

The contract: the statement is the transaction's; the caller touches neither the session
nor the connection until :meth:`Background.wait` (which raises the statement's error in
the caller's thread) or :meth:`Background.abandon` returned, and the transaction commits,
or rolls back, after that as before.

The thread is a :class:`threading.Thread`, whose ``start`` waits until the new thread
runs (1.1 ms a statement on the seventh machine): that hand-over sends the statement at
once. A thread started by ``_thread.start_new_thread``, which returns at once, first
waited for the GIL while the caller's thread computed, up to a switch interval: its
statements went out later, and a PostgreSQL bench's Encounters waited for them 37 -> 53
and 42 -> 59 us each (``_PageWriter.add``, two runs each).
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Background:
    """Runs one statement at a time on the caller's connection in a thread of its own
    (see the module docstring for the contract)."""

    def __init__(self, name: str = "background-statement") -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def running(self) -> bool:
        """True from :meth:`run` until :meth:`wait` or :meth:`abandon` returned."""
        return self._thread is not None

    def run(self, statement: Callable[[], None]) -> None:
        """Wait for the previous statement, then start ``statement``."""
        self.wait()

        def target() -> None:
            try:
                statement()
            except BaseException as exc:  # raised again by wait(), in the caller's thread
                self._error = exc

        self._thread = threading.Thread(target=target, name=self._name, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Wait for the running statement; raise its error."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def abandon(self) -> None:
        """Wait for the running statement, its error dropped (the caller is already failing)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        self._error = None
