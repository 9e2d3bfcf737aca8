"""A model's tensor signature, read from the ONNX graph: names, datatypes and shapes."""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inscale.datatypes import DataType, from_onnx
from inscale.errors import ModelLoadError

Dim = int | None  # None: dynamic (a symbolic or unnamed dim in the graph)


def shape_text(shape: Sequence[Dim]) -> str:
    """A shape as every message writes it, `[-1, 64]`."""
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: DataType
    shape: tuple[Dim, ...]
    dim_names: tuple[str | None, ...]  # symbolic names, used to link padded inputs to outputs

    @property
    def dims(self) -> list[int]:
        """The shape as the protocols write it: -1 for a dynamic dim."""
        return [-1 if d is None else d for d in self.shape]


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def batchable(self) -> bool:
        """Rows can be concatenated on axis 0 only if every tensor's first axis is dynamic."""
        tensors = self.inputs + self.outputs
        return bool(self.inputs) and all(t.shape and t.shape[0] is None for t in tensors)

    def input(self, name: str) -> TensorSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None


def _spec(name: str, onnx_type: str, shape: Sequence[object] | None) -> TensorSpec:
    datatype = from_onnx(onnx_type)
    if datatype is None:
        raise ModelLoadError(f"tensor '{name}' has type {onnx_type}, which inscale cannot serve")
    dims = list(shape or [])
    return TensorSpec(
        name=name,
        datatype=datatype,
        shape=tuple(d if isinstance(d, int) and d >= 0 else None for d in dims),
        dim_names=tuple(d if isinstance(d, str) else None for d in dims),
    )


def signature_of(session: object) -> Signature:
    """Signature of an `onnxruntime.InferenceSession` (typed loosely: ORT has no stubs)."""
    return Signature(
        inputs=tuple(_spec(a.name, a.type, a.shape) for a in session.get_inputs()),  # type: ignore[attr-defined]
        outputs=tuple(_spec(a.name, a.type, a.shape) for a in session.get_outputs()),  # type: ignore[attr-defined]
    )


def sample_inputs(
    signature: Signature, rows: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Valid inputs for warm-up: random floats, zero integers (safe as indices), empty strings."""
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = [1 if d is None else d for d in spec.shape]
        if shape and spec.shape[0] is None:
            shape[0] = rows
        dtype = spec.datatype.numpy
        if spec.datatype.name == "BYTES":
            out[spec.name] = np.full(shape, "", dtype=object)
        elif dtype.kind == "f":
            out[spec.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        else:
            out[spec.name] = np.zeros(shape, dtype=dtype)
    return out
