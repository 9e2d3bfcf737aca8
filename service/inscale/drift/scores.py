"""Drift scores of a window's bin counts against the reference's shares.

Both are computed on the same bins, so they cost one pass over a handful of numbers:
- the population stability index, sum((a - e) * ln(a / e)), the credit-risk industry's
  measure (under 0.1 stable, 0.1-0.25 moderate, over 0.25 a shift); an empty bin's share is
  floored at SHARE_FLOOR so that a bin with no rows gives a large, finite term;
- Kolmogorov-Smirnov on the bins, the largest gap between the two cumulative shares: between 0
  and 1, and read as "the share of rows that moved across some edge".
"""

import numpy as np

SHARE_FLOOR = 1e-4


def psi(observed: np.ndarray, expected: np.ndarray) -> float:
    """PSI of bin counts `observed` against reference shares `expected` (same length)."""
    total = observed.sum()
    if total <= 0:
        return 0.0
    actual = np.maximum(observed / total, SHARE_FLOOR)
    reference = np.maximum(expected, SHARE_FLOOR)
    return float(np.sum((actual - reference) * np.log(actual / reference)))


def ks(observed: np.ndarray, expected: np.ndarray) -> float:
    total = observed.sum()
    if total <= 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(observed / total) - np.cumsum(expected))))
