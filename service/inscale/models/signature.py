"""A model's tensor signature, read from the ONNX graph, and checks of requests against it.

The checks run before anything is queued, so a bad request costs a few microseconds and
never reaches a batch where it could fail other callers' requests.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inscale.datatypes import DataType, from_onnx
from inscale.errors import InvalidInput, ModelLoadError, Unsupported

Dim = int | None  # None: dynamic (a symbolic or unnamed dim in the graph)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: DataType
    shape: tuple[Dim, ...]
    dim_names: tuple[str | None, ...]  # symbolic names, used to link padded inputs to outputs

    def shape_text(self) -> str:
        return "[" + ", ".join("-1" if d is None else str(d) for d in self.shape) + "]"


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


def check_inputs(
    signature: Signature,
    arrays: Mapping[str, np.ndarray],
    *,
    batchable: bool,
    max_rows: int,
    variable_axes: Mapping[str, int],
) -> int:
    """Validate names, dtypes, ranks and fixed dims; return the request's row count.

    `arrays` must already have the declared dtype (the decoders convert); anything else is a
    decoding bug and is reported as a wrong dtype rather than passed to the model.
    """
    unknown = sorted(set(arrays) - {s.name for s in signature.inputs})
    if unknown:
        expected = ", ".join(s.name for s in signature.inputs)
        raise InvalidInput(f"unknown input '{unknown[0]}'; the model's inputs are: {expected}")
    rows: int | None = None
    for spec in signature.inputs:
        array = arrays.get(spec.name)
        if array is None:
            raise InvalidInput(f"missing input '{spec.name}'")
        if spec.datatype.name == "BF16":
            raise Unsupported(f"input '{spec.name}': BF16 tensors are not supported")
        if array.dtype != spec.datatype.numpy:
            raise InvalidInput(
                f"input '{spec.name}': expected datatype {spec.datatype.name}, got {array.dtype}"
            )
        _check_shape(spec, array.shape, variable_axes.get(spec.name))
        if batchable:
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput(
                    f"input '{spec.name}': has {array.shape[0]} rows but other inputs have {rows}"
                )
            rows = array.shape[0]
    if rows is None:  # not batchable: one request is one run
        return 1
    if rows < 1:
        raise InvalidInput("the request has no rows")
    if rows > max_rows:
        raise InvalidInput(f"the request has {rows} rows; this model takes at most {max_rows}")
    return rows


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], variable_axis: int | None) -> None:
    if shape == (0,) and spec.shape and spec.shape[0] is None:
        raise InvalidInput(f"input '{spec.name}': the request has no rows")
    if len(shape) != len(spec.shape):
        raise InvalidInput(
            f"input '{spec.name}': expected shape {spec.shape_text()} (rank {len(spec.shape)}), "
            f"got {list(shape)} (rank {len(shape)})"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if want is not None and want != got and axis != variable_axis:
            raise InvalidInput(
                f"input '{spec.name}': expected shape {spec.shape_text()}, got {list(shape)} "
                f"(axis {axis} must be {want})"
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
