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
