"""Counts kept in plain Python numbers on the hot path, handed to prometheus-client in bulk.

prometheus-client takes a lock on every `inc` and walks the buckets on every `observe`: about
0.5 and 1 to 3 microseconds on these machines, several per request, which is several percent
of a 150-microsecond request. Every observation inscale makes happens on the event loop
thread, so a local tally needs no lock; `flush()` (also on the loop: before each scrape, and
every second per worker in multiprocess mode) adds what accumulated to the real metric, whose
value then lives where prometheus-client keeps it (memory, or the multiprocess files).
"""

from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Histogram


class Tally:
    """The local part of one labelled counter."""

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0.0
            self._child.inc(pending)


class Spread:
    """The local part of one labelled histogram: counts per bucket and the sum."""

    __slots__ = ("_bounds", "_buckets", "_counts", "_sum", "_total")

    def __init__(self, child: Histogram, bounds: tuple[float, ...]) -> None:
        # prometheus-client keeps a value object per bucket (not cumulative) and one for the
        # sum; adding to them is how `observe` records, so bulk adds stay exact.
        values: Any = child
        self._buckets = values._buckets
        self._total = values._sum
        self._bounds = (*bounds, float("inf"))
        if len(self._buckets) != len(self._bounds):
            raise RuntimeError("prometheus-client's Histogram layout is not the expected one")
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1  # first bucket with value <= le
        self._sum += value

    def flush(self) -> None:
        counts = self._counts
        if not any(counts):
            return
        self._counts = [0] * len(counts)
        total, self._sum = self._sum, 0.0
        self._total.inc(total)
        for bucket, count in zip(self._buckets, counts, strict=True):
            if count:
                bucket.inc(count)
