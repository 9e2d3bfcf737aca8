"""Quantile bins: how a reference profile cuts each feature, and how values are counted in them.

A feature's bins are given by its inner edges, strictly increasing: value v falls in bin
`searchsorted(edges, v, side="right")`, so bin i holds edges[i-1] <= v < edges[i], the first
bin everything below edges[0] and the last everything from edges[-1] up. With k - 1 edges there
are k bins. Edges are the reference's quantiles with repeats removed; a feature with fewer
distinct values than bins (a pixel that is mostly 0, a constant) gets a bin per value instead,
plus one below and one above them all, so a new value either way still shows.
"""

import numpy as np

DEFAULT_BINS = 10


def make_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Inner edges of up to `bins` equal-share bins of a feature's reference values."""
    finite = np.unique(values[np.isfinite(values)].astype(np.float64))
    if finite.size == 0:
        return np.zeros(0, dtype=np.float64)
    if finite.size < bins:
        # Few distinct values (a pixel that is mostly 0, a constant): a bin for each, one
        # below the smallest and one above the largest, so a new value either way shows.
        return np.append(finite, np.nextafter(finite[-1], np.inf))
    return np.unique(np.quantile(values[np.isfinite(values)], np.linspace(0, 1, bins + 1)[1:-1]))


def counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of `values` fall in each of the len(edges) + 1 bins (NaN in none)."""
    finite = values[~np.isnan(values)]
    index = np.searchsorted(edges, finite, side="right")
    return np.bincount(index, minlength=edges.size + 1)


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    total = counts(values, edges)
    return total / max(int(total.sum()), 1)


class ColumnCounter:
    """`counts` for many binned columns of one tensor's rows at once, into one flat array.

    Column j of the rows (`columns[j]`) is cut by `edges[j]` and counted into
    `flat[offsets[j]:offsets[j] + len(edges[j]) + 1]`. A value's bin is how many of its
    column's edges are at or below it, which is `searchsorted(..., side="right")`; shorter
    edge lists are padded with NaN, which no comparison passes.
    """

    ROWS_AT_ONCE = 4096  # bounds the scratch arrays to this many rows

    def __init__(self, columns: list[int], edges: list[np.ndarray], offsets: list[int]) -> None:
        self.columns = np.asarray(columns, dtype=np.intp)
        width = max((e.size for e in edges), default=0)
        self._edges = np.full((len(edges), width), np.nan)
        for j, cut in enumerate(edges):
            self._edges[j, : cut.size] = cut
        self._offsets = np.asarray(offsets, dtype=np.intp)

    def add(self, rows: np.ndarray, flat: np.ndarray) -> None:
        """Count `rows` (rows x the tensor's flat row) into `flat`."""
        for start in range(0, len(rows), self.ROWS_AT_ONCE):
            values = rows[start : start + self.ROWS_AT_ONCE, self.columns]
            values = values.astype(np.float64, copy=False)
            index = np.broadcast_to(self._offsets, values.shape).copy()
            for cut in self._edges.T:  # one pass per edge position: a few, over 2-D arrays
                index += values >= cut
            finite = ~np.isnan(values)
            flat += np.bincount(index[finite], minlength=flat.size)
