"""A model's reference profile (`drift_reference.json`): what its inputs and outputs looked like
in the data it was trained or validated on, binned, so served rows can be compared with it.

Made by `inscale reference MODEL_DIR --data FILE` (`build`), read by the server at load
(`load`). One file per model folder, for every version; a version folder may carry its own.

Features are the flat columns of each numeric input: an input shaped [-1, 8, 8] has 64, named
`input[0]` to `input[63]`. Each has the quantile bins of `bins.py` and the reference's share
per bin. An integer output of one value per row is a class label: the reference keeps its share
per class, and served rows of an unseen class count in one more bin, "other". A float output
is binned per column like an input. BYTES inputs and outputs are skipped, and the file says so.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inscale.drift import bins
from inscale.errors import InscaleError, quoted
from inscale.signature import Signature, TensorSpec

REFERENCE_FILE = "drift_reference.json"
SCHEMA = 1
MAX_CLASSES = 256  # more distinct integers than this is no class label: binned instead


class ReferenceError(InscaleError):
    """A reference file that cannot be read, or does not fit the model."""


@dataclass(frozen=True)
class Feature:
    """One monitored column: of a tensor's flat row (`index`), binned or by class."""

    name: str  # "input[3]", or an output's name for a class label
    tensor: str
    index: int
    edges: np.ndarray  # bins: inner edges; classes: the sorted class values
    expected: np.ndarray  # the reference's share per bin (classes: per class, then "other")
    classes: bool = False

    def count(self, column: np.ndarray) -> np.ndarray:
        """Bin counts of served values (same length as `expected`)."""
        if not self.classes:
            return bins.counts(column.astype(np.float64, copy=False), self.edges)
        index = np.searchsorted(self.edges, column)
        inside = np.minimum(index, self.edges.size - 1)
        known = (index < self.edges.size) & (self.edges[inside] == column)
        found = np.bincount(index[known], minlength=self.edges.size + 1)
        found[-1] += int((~known).sum())
        return found


@dataclass(frozen=True)
class Reference:
    path: Path
    source: str
    rows: int
    made_at: str
    inputs: list[Feature]
    outputs: list[Feature]
    skipped: list[str]

    def describe(self) -> dict[str, Any]:
        """What `GET /models/{name}` shows of it."""
        return {
            "file": str(self.path),
            "source": self.source,
            "rows": self.rows,
            "made_at": self.made_at,
            "input_features": len(self.inputs),
            "outputs": sorted({f.tensor for f in self.outputs}),
            "skipped": self.skipped,
        }


def _numeric(spec: TensorSpec) -> bool:
    return spec.datatype.name not in ("BYTES", "BF16", "BOOL")


def _columns(array: np.ndarray) -> np.ndarray:
    """Rows by flat columns."""
    return array.reshape(array.shape[0], -1)


def _is_label(spec: TensorSpec, array: np.ndarray) -> bool:
    one_per_row = _columns(array).shape[1] == 1
    return spec.datatype.numpy.kind in "iu" and one_per_row and np.unique(array).size <= MAX_CLASSES


def build(
    signature: Signature,
    inputs: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    source: str,
    made_at: str,
    bin_count: int = bins.DEFAULT_BINS,
) -> dict[str, Any]:
    """The reference document for rows `inputs` and the model's `outputs` on them."""
    rows = len(next(iter(inputs.values())))
    skipped: list[str] = []

    def binned(spec: TensorSpec, array: np.ndarray) -> list[dict[str, Any]]:
        features = []
        for index, column in enumerate(_columns(array).T):
            edges = bins.make_edges(column.astype(np.float64), bin_count)
            features.append(
                {
                    "name": f"{spec.name}[{index}]",
                    "index": index,
                    "edges": edges.tolist(),
                    "shares": bins.shares(column.astype(np.float64), edges).tolist(),
                }
            )
        return features

    document_inputs = []
    for spec in signature.inputs:
        if not _numeric(spec):
            skipped.append(f"input {spec.name}: {spec.datatype.name} is not numeric")
            continue
        document_inputs.append({"name": spec.name, "features": binned(spec, inputs[spec.name])})
    document_outputs: list[dict[str, Any]] = []
    for spec in signature.outputs:
        array = outputs[spec.name]
        if not _numeric(spec):
            skipped.append(f"output {spec.name}: {spec.datatype.name} is not numeric")
        elif _is_label(spec, array):
            classes, found = np.unique(_columns(array)[:, 0], return_counts=True)
            document_outputs.append(
                {
                    "name": spec.name,
                    "kind": "classes",
                    "classes": classes.tolist(),
                    "shares": (found / found.sum()).tolist(),
                }
            )
        else:
            document_outputs.append(
                {"name": spec.name, "kind": "bins", "features": binned(spec, array)}
            )
    return {
        "schema": SCHEMA,
        "made_at": made_at,
        "source": source,
        "rows": rows,
        "inputs": document_inputs,
        "outputs": document_outputs,
        "skipped": skipped,
    }


def find(model_dir: Path, version: int) -> Path | None:
    """The version's own reference, else the model folder's."""
    for path in (model_dir / str(version) / REFERENCE_FILE, model_dir / REFERENCE_FILE):
        if path.is_file():
            return path
    return None


def load(path: Path, signature: Signature) -> Reference:
    """Read and check a reference against the model it is for; ReferenceError names the
    file and the first thing wrong."""
    where = quoted(str(path))
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReferenceError(f"drift reference {where} cannot be read: {exc}") from exc
    try:
        return _parse(path, document, signature)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReferenceError(f"drift reference {where} is malformed: {exc}") from exc


def _parse(path: Path, document: Any, signature: Signature) -> Reference:
    where = quoted(str(path))
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ReferenceError(f"drift reference {where} is not a schema {SCHEMA} reference")
    inputs = []
    for entry in document["inputs"]:
        spec = signature.input(entry["name"])
        if spec is None:
            raise ReferenceError(
                f"drift reference {where} describes input {quoted(entry['name'])}, which the "
                "model does not have"
            )
        inputs += _features(entry, spec, where)
    outputs_by_name = {spec.name: spec for spec in signature.outputs}
    outputs = []
    for entry in document["outputs"]:
        spec = outputs_by_name.get(entry["name"])
        if spec is None:
            raise ReferenceError(
                f"drift reference {where} describes output {quoted(entry['name'])}, which the "
                "model does not have"
            )
        if entry["kind"] == "classes":
            classes = np.asarray(entry["classes"])
            shares = _shares(entry["shares"], classes.size, entry["name"], where)
            outputs.append(
                Feature(entry["name"], entry["name"], 0, classes, np.append(shares, 0.0), True)
            )
        else:
            outputs += _features(entry, spec, where)
    return Reference(
        path=path,
        source=str(document.get("source", "")),
        rows=int(document["rows"]),
        made_at=str(document.get("made_at", "")),
        inputs=inputs,
        outputs=outputs,
        skipped=[str(s) for s in document.get("skipped", [])],
    )


def _features(entry: dict[str, Any], spec: TensorSpec, where: str) -> list[Feature]:
    width = _row_width(spec)
    features = []
    for raw in entry["features"]:
        index = int(raw["index"])
        if width is not None and not 0 <= index < width:
            raise ReferenceError(
                f"drift reference {where}: feature {quoted(raw['name'])} is column {index}, "
                f"but {spec.name}'s rows have {width} values"
            )
        edges = np.asarray(raw["edges"], dtype=np.float64)
        if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
            raise ReferenceError(
                f"drift reference {where}: feature {quoted(raw['name'])}'s edges are not "
                "strictly increasing"
            )
        shares = _shares(raw["shares"], edges.size + 1, raw["name"], where)
        features.append(Feature(str(raw["name"]), spec.name, index, edges, shares))
    if width is not None and len(features) != width and features:
        raise ReferenceError(
            f"drift reference {where} has {len(features)} features for {spec.name}, whose "
            f"rows have {width} values"
        )
    return features


def _shares(raw: Any, size: int, name: str, where: str) -> np.ndarray:
    shares = np.asarray(raw, dtype=np.float64)
    if shares.shape != (size,) or np.any(shares < 0) or abs(float(shares.sum()) - 1) > 1e-6:
        raise ReferenceError(
            f"drift reference {where}: {quoted(name)}'s shares must be {size} non-negative "
            "numbers summing to 1"
        )
    return shares


def _row_width(spec: TensorSpec) -> int | None:
    """Values per row, when the signature fixes every non-batch dim."""
    dims = spec.shape[1:]
    if any(d is None for d in dims):
        return None
    width = 1
    for d in dims:
        assert d is not None
        width *= d
    return width
