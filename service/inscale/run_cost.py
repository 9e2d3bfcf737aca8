"""What a model run costs, learned online: seconds per run as a function of its rows.

The batcher asks two questions of it, both on the event loop's thread and in a few hundred
nanoseconds: when would a new request finish if admitted now (admission), and does waiting
for more rows make a batch cheaper per row (the adaptive queue delay).

The model is kept per batching key (requests of different shapes cost differently). For each
batch size seen it keeps the median of that size's last `WINDOW` runs, and from those medians a
weighted least-squares line `seconds = fixed + per_row * rows` that answers for sizes not
seen often enough yet. Why this shape:

- outliers: a median ignores a lone 50 ms garbage-collection pause in a stream of 1 ms runs;
- drift: once most of the window has moved (five runs of a size), so has the estimate, so a
  machine that gets slower (a noisy neighbour, a thermal limit) is followed within a few runs;
- nothing here depends on load: the estimate is the cost of a run, not a learned wait, so it
  cannot keep a lone client waiting after a burst (BentoML's adaptive batcher learns a wait
  and was measured holding a single client at 61 requests/s for a minute after one).

This module imports nothing from inscale.
"""

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

WINDOW = 9  # runs per batch size whose median is its cost
MAX_SIZES = 64  # batch sizes remembered per key (the least recently run are forgotten)
MAX_KEYS = 64  # shapes remembered (padded models can have many)
RESUM_EVERY = 1024  # runs between recomputations of the line's sums from scratch


@dataclass(slots=True)
class _SizeCost:
    samples: deque[float]
    seconds: float  # the median of `samples`
    last: int = 0  # the observation counter when it was last updated (for eviction)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        ordered = sorted(self.samples)
        middle = len(ordered) // 2
        self.seconds = (
            ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
        )


@dataclass(slots=True)
class _KeyCost:
    """One key's sizes and the sums of the weighted least-squares line through their medians
    (weight: samples in the window), kept current at each run so an estimate is O(1)."""

    sizes: dict[int, _SizeCost] = field(default_factory=dict)
    observed: int = 0
    # Weighted sums over sizes: weight, x, y, x*x, x*y (x: rows, y: median seconds).
    sw: float = 0.0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def _account(self, rows: int, size: _SizeCost, sign: float) -> None:
        w, x, y = sign * len(size.samples), float(rows), size.seconds
        self.sw += w
        self.sx += w * x
        self.sy += w * y
        self.sxx += w * x * x
        self.sxy += w * x * y

    def observe(self, rows: int, seconds: float) -> None:
        self.observed += 1
        size = self.sizes.get(rows)
        if size is None:
            if len(self.sizes) >= MAX_SIZES:
                oldest = min(self.sizes, key=lambda s: self.sizes[s].last)
                self._account(oldest, self.sizes.pop(oldest), -1.0)
            size = self.sizes[rows] = _SizeCost(deque(maxlen=WINDOW), seconds)
        else:
            self._account(rows, size, -1.0)
        size.add(seconds)
        size.last = self.observed
        self._account(rows, size, 1.0)
        if self.observed % RESUM_EVERY == 0:  # shed the rounding that add-and-subtract gathers
            self.sw = self.sx = self.sy = self.sxx = self.sxy = 0.0
            for each_rows, each in self.sizes.items():
                self._account(each_rows, each, 1.0)

    def line(self) -> tuple[float, float]:
        """(fixed, per_row): the fit through the sizes' medians; with one size, or a fit that
        would make a run cost less than nothing, the line through the origin (a pessimistic
        guess for larger batches until they are seen)."""
        var = self.sxx - self.sx * self.sx / self.sw
        if var > 1e-9 * self.sxx:
            slope = max((self.sxy - self.sx * self.sy / self.sw) / var, 0.0)
            fixed = (self.sy - slope * self.sx) / self.sw
            if fixed >= 0:
                return fixed, slope
        return 0.0, self.sxy / self.sxx

    def estimate(self, rows: int) -> float:
        size = self.sizes.get(rows)
        if size is not None and len(size.samples) == WINDOW:
            return size.seconds  # measured often enough: the size's own median beats the line
        fixed, per_row = self.line()
        return fixed + per_row * rows


class RunCost:
    """Learned seconds per run, per batching key and batch size."""

    __slots__ = ("_keys", "_primary")

    def __init__(self) -> None:
        self._keys: dict[Hashable, _KeyCost] = {}
        self._primary: Hashable = None  # the key with the most runs: what is reported

    def observe(self, key: Hashable, rows: int, seconds: float) -> None:
        """A run of `rows` rows with `key` took `seconds` (from hand-off to results)."""
        if rows < 1 or seconds <= 0:
            return
        cost = self._keys.get(key)
        if cost is None:
            if len(self._keys) >= MAX_KEYS:
                least = min(self._keys, key=lambda k: self._keys[k].observed)
                del self._keys[least]
                if least == self._primary:
                    self._primary = None
            cost = self._keys[key] = _KeyCost()
        cost.observe(rows, seconds)
        primary = self._keys.get(self._primary)
        if primary is None or cost.observed > primary.observed:
            self._primary = key

    def estimate(self, key: Hashable, rows: int) -> float | None:
        """Seconds a run of `rows` rows with `key` is expected to take; for a key never run,
        the most-run key's estimate; None before any run at all."""
        cost = self._keys.get(key)
        if cost is None:
            cost = self._keys.get(self._primary)
            if cost is None:
                return None
        return cost.estimate(rows)

    def report(self, sizes: Iterable[int]) -> dict[int, float]:
        """The most-run key's estimates for `sizes` (what metrics and statistics show)."""
        cost = self._keys.get(self._primary)
        if cost is None:
            return {}
        return {rows: cost.estimate(rows) for rows in sizes}


def reported_sizes(max_batch_size: int) -> list[int]:
    """Batch sizes whose estimates are reported: 1, the powers of two below the limit, and
    the limit (at most 18 sizes, so metric label cardinality stays bounded)."""
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    if max_batch_size > 1:
        sizes.append(max_batch_size)
    return sizes
