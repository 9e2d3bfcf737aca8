"""A sliding window of bin counts: the last `window_s` seconds, in `SLOTS` slots of equal length.

Adding goes to the current slot; slots older than the window are zeroed as time moves on, so
the totals are the counts of roughly the last window_s seconds (to within one slot) at a cost
independent of the rows seen. One flat array holds every feature's bins side by side.
"""

import time
from collections.abc import Callable

import numpy as np

SLOTS = 30


class Window:
    def __init__(
        self, width: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._slot_s = window_s / SLOTS
        self._clock = clock
        self._counts = np.zeros((SLOTS, width), dtype=np.int64)
        self._rows = np.zeros(SLOTS, dtype=np.int64)
        self._started = clock()
        self._slot = self._slot_at(self._started)

    def _slot_at(self, now: float) -> int:
        return int(now / self._slot_s)

    def _advance(self) -> None:
        now_slot = self._slot_at(self._clock())
        passed = now_slot - self._slot
        if passed <= 0:
            return
        for step in range(1, min(passed, SLOTS) + 1):
            index = (self._slot + step) % SLOTS
            self._counts[index] = 0
            self._rows[index] = 0
        self._slot = now_slot

    def add(self, counts: np.ndarray, rows: int) -> None:
        self._advance()
        index = self._slot % SLOTS
        self._counts[index] += counts
        self._rows[index] += rows

    def totals(self) -> tuple[np.ndarray, int]:
        self._advance()
        return self._counts.sum(axis=0), int(self._rows.sum())

    def covered_s(self) -> float:
        """How much of the window has elapsed since it started (the window's length, once full)."""
        return min(self.window_s, self._clock() - self._started)
