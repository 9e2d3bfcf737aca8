"""Sample inputs for `inscale optimize`: the rows static quantization calibrates on and every
variant is evaluated on (with labels: accuracy; without: agreement with the original model).

A file holds rows for each of the model's inputs, and optionally their labels:
- `.npz`: one array per input, by input name, and `labels`;
- `.npy`: one array, for a model with one input (no labels);
- `.json`: `{"inputs": ROWS, "labels": [...]}`, as a `/predict` body (ROWS a list of rows for a
  one-input model, or an object by input name).

A model folder may carry its own (`samples.npz` or `samples.json`), used when `--samples` is
not given: the bundled models carry their 450 held-out rows.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inscale.errors import InscaleError, quoted
from inscale.signature import Signature

SAMPLE_FILES = ("samples.npz", "samples.json")
LABELS = "labels"


class SampleError(InscaleError):
    """A sample file that cannot be read, or does not fit the model."""


@dataclass(frozen=True)
class Samples:
    inputs: dict[str, np.ndarray]  # by input name, rows on axis 0, in the input's dtype
    labels: np.ndarray | None
    source: Path

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batch(self, start: int, size: int) -> dict[str, np.ndarray]:
        return {name: array[start : start + size] for name, array in self.inputs.items()}


def find_sample_file(model_dir: Path) -> Path | None:
    for name in SAMPLE_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def load_samples(path: Path, signature: Signature) -> Samples:
    if not path.is_file():
        raise SampleError(f"sample file {quoted(str(path))} does not exist")
    try:
        raw, labels = _read(path, signature)
    except SampleError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SampleError(f"sample file {quoted(str(path))} cannot be read: {exc}") from exc
    inputs = {}
    for spec in signature.inputs:
        if spec.name not in raw:
            raise SampleError(
                f"sample file {quoted(str(path))} has no rows for input '{spec.name}'"
            )
        try:
            array = np.asarray(raw[spec.name], dtype=spec.datatype.numpy)
        except (ValueError, TypeError) as exc:
            raise SampleError(
                f"sample file {quoted(str(path))}: input '{spec.name}' is not "
                f"{spec.datatype.name} rows: {exc}"
            ) from exc
        fixed = spec.shape[1:]
        if array.ndim != len(spec.shape) or any(
            want is not None and got != want
            for got, want in zip(array.shape[1:], fixed, strict=False)
        ):
            raise SampleError(
                f"sample file {quoted(str(path))}: input '{spec.name}' has shape "
                f"{list(array.shape)}, the model takes {spec.dims}"
            )
        inputs[spec.name] = array
    counts = {len(a) for a in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise SampleError(
            f"sample file {quoted(str(path))}: inputs must have the same, nonzero number of rows"
        )
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (counts.pop(),):
            raise SampleError(
                f"sample file {quoted(str(path))}: {len(labels)} labels for "
                f"{len(next(iter(inputs.values())))} rows"
            )
    return Samples(inputs, labels, path)


def _read(path: Path, signature: Signature) -> tuple[dict[str, object], object | None]:
    only = signature.inputs[0].name if len(signature.inputs) == 1 else None
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        labels = arrays.pop(LABELS, None)
        return dict(arrays), labels
    if suffix == ".npy":
        if only is None:
            raise SampleError(
                f"sample file {quoted(str(path))}: a .npy file holds one array, and the model "
                "has several inputs: use .npz with one array per input"
            )
        return {only: np.load(path, allow_pickle=False)}, None
    if suffix == ".json":
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or "inputs" not in document:
            raise SampleError(
                f'sample file {quoted(str(path))}: expected {{"inputs": ..., "labels": ...}}'
            )
        rows = document["inputs"]
        if isinstance(rows, list):
            if only is None:
                raise SampleError(
                    f"sample file {quoted(str(path))}: the model has several inputs; give "
                    '"inputs" as an object by input name'
                )
            rows = {only: rows}
        if not isinstance(rows, dict):
            raise SampleError(
                f'sample file {quoted(str(path))}: "inputs" must be rows or an object'
            )
        return rows, document.get(LABELS)
    raise SampleError(f"sample file {quoted(str(path))}: use .npz, .npy or .json")
