"""The SQLite checkpointer registry survives an engine's finalizer running while its lock
is held (the garbage collector runs finalizers at any allocation, in the thread that
allocates): in the holder's thread, or in another one the holder waits for (the new
checkpointer's thread, which ``Thread.start`` waits for). Both hung ``make_engine``."""

from __future__ import annotations

import threading
from pathlib import Path

from store.db import (
    WalCheckpointer,
    _checkpointers,
    _checkpointers_lock,
    _release_checkpointer,
    _shared_checkpointer,
)


def _in_thread(target: object) -> None:
    worker = threading.Thread(target=target, daemon=True)  # type: ignore[arg-type]
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "waited for the registry's lock"


def test_a_release_inside_the_critical_section_does_not_hang(tmp_path: Path) -> None:
    path = str(tmp_path / "a.db")
    first = _shared_checkpointer(path)
    got: list[WalCheckpointer] = []

    def run() -> None:
        with _checkpointers_lock:  # as when a collection runs the finalizer in there
            _release_checkpointer(first)
            got.append(_shared_checkpointer(path))

    _in_thread(run)
    assert first.stopped
    assert got[0] is not first and not got[0].stopped and got[0].engines == 1
    _release_checkpointer(got[0])
    assert path not in _checkpointers


def test_a_stopped_checkpointer_still_registered_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    first = _shared_checkpointer(path)
    first.stop()  # its last engine collected between the lookup and the count
    again = _shared_checkpointer(path)
    assert again is not first and not again.stopped and again.engines == 1
    _release_checkpointer(again)
    assert path not in _checkpointers


def test_a_release_from_another_thread_while_the_lock_is_held_does_not_wait(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "c.db")
    first = _shared_checkpointer(path)
    with _checkpointers_lock:
        _in_thread(lambda: _release_checkpointer(first))
        assert not first.stopped  # left to the holder
        again = _shared_checkpointer(path)
    assert first.stopped
    assert again is not first and not again.stopped and again.engines == 1
    _release_checkpointer(again)
    assert again.stopped and path not in _checkpointers
