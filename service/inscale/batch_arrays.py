"""Turning several requests' arrays into one batch and the batch's outputs back into theirs.

Rows are concatenated on axis 0 and outputs split at the accumulated row counts. Inputs
configured as variable-length are padded to the longest request in the batch, and the outputs
that follow that length are trimmed back, so each caller gets exactly its own rows.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class PadRule:
    """Input `input` varies along `axis`; `outputs` maps output name -> axis to trim."""

    input: str
    axis: int
    value: float
    outputs: Mapping[str, int]


def merge(requests: Sequence[Mapping[str, np.ndarray]], pads: Sequence[PadRule]) -> Arrays:
    """One array per input holding every request's rows, in request order."""
    if len(requests) == 1 and not pads:
        return dict(requests[0])  # nothing to merge: no copy
    merged: Arrays = {}
    pad_by_input = {rule.input: rule for rule in pads}
    for name in requests[0]:
        parts = [r[name] for r in requests]
        rule = pad_by_input.get(name)
        if rule is not None:
            parts = _pad_to_longest(parts, rule)
        merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return merged


def _pad_to_longest(parts: list[np.ndarray], rule: PadRule) -> list[np.ndarray]:
    longest = max(p.shape[rule.axis] for p in parts)
    padded = []
    for part in parts:
        missing = longest - part.shape[rule.axis]
        if missing:
            widths = [(0, 0)] * part.ndim
            widths[rule.axis] = (0, missing)
            part = np.pad(part, widths, constant_values=np.asarray(rule.value, part.dtype))
        padded.append(part)
    return padded


def split(
    outputs: Mapping[str, np.ndarray],
    requests: Sequence[Mapping[str, np.ndarray]],
    row_counts: Sequence[int],
    pads: Sequence[PadRule],
) -> list[Arrays]:
    """Each request's slice of every output, trimmed back to its own padded lengths."""
    if len(requests) == 1 and not pads:
        return [dict(outputs)]
    results: list[Arrays] = []
    start = 0
    for request, count in zip(requests, row_counts, strict=True):
        own = {name: array[start : start + count] for name, array in outputs.items()}
        for rule in pads:
            length = request[rule.input].shape[rule.axis]
            for out_name, axis in rule.outputs.items():
                array = own.get(out_name)
                if array is not None and array.shape[axis] > length:
                    index = [slice(None)] * array.ndim
                    index[axis] = slice(0, length)
                    own[out_name] = array[tuple(index)]
        results.append(own)
        start += count
    return results
