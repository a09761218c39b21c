"""Logging what a peer can repeat at will, without letting it flood the log."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable


class Repeats:
    """How often an event that a peer can repeat at will is logged: its first occurrence,
    then at most one line per ``window_s`` for the same key. Each line says how many
    occurrences it stands for (itself and those left out since the previous line), so a
    sender that reconnects every second with a wrong certificate costs one line a minute,
    not 86,400 a day, and the operator still sees the rate.

    At most ``keys`` keys are remembered (the least recently seen is forgotten first), so
    a scan from many addresses cannot grow it. Thread-safe: the MLLP listener's messages
    are taken in on worker threads."""

    def __init__(
        self,
        window_s: float = 60.0,
        *,
        keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s, self._capacity, self._clock = window_s, keys, clock
        #: key -> (when its last line was logged, occurrences left out since)
        self._seen: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, key: Hashable) -> int:
        """0 when this occurrence of ``key`` is not to be logged; otherwise how many
        occurrences its line stands for (1, then 1 + those left out)."""
        now = self._clock()
        with self._lock:
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.window_s:
                self._seen[key] = (last[0], last[1] + 1)
                self._seen.move_to_end(key)
                return 0
            self._seen[key] = (now, 0)
            self._seen.move_to_end(key)
            while len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return 1 + (last[1] if last is not None else 0)
