"""Every check of a request's inputs against the model, each written once.

Two steps, both before anything is queued, so a bad request costs a few microseconds and
never reaches a batch where it could fail other callers' requests:

- `input_spec`: a decoder asks which of the model's inputs a name means, and whether the
  datatype the wire declares is the model's, before it decodes any data (so a wrong datatype
  is reported as one, not as a confusing decoding error);
- `count_rows`: the data plane checks the decoded arrays as a whole (every input present,
  ranks and fixed dims, rows agreeing and within the limit) and learns the row count.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from inscale.datatypes import DataType
from inscale.errors import InvalidInput, Unsupported
from inscale.signature import Signature, TensorSpec, shape_text


@dataclass(frozen=True, slots=True)
class InputRules:
    """What a model version accepts, fixed when it loads."""

    signature: Signature
    batchable: bool
    max_rows: int  # rows per request (1 when not batchable); runs are split by the data plane
    variable_axes: Mapping[str, int]  # input -> axis padded per batch, free in requests


def input_spec(rules: InputRules, name: str, wire_type: DataType | None = None) -> TensorSpec:
    """The spec of input `name`; `wire_type` is the datatype the request declares, if any."""
    spec = rules.signature.input(name)
    if spec is None:
        expected = ", ".join(s.name for s in rules.signature.inputs)
        raise InvalidInput(f"unknown input '{name}'; the model's inputs are: {expected}")
    if wire_type is not None and wire_type.name != spec.datatype.name:
        hint = "; this model cannot take BF16" if wire_type.name == "BF16" else ""
        raise InvalidInput(
            f"input '{name}': expected datatype {spec.datatype.name}, got {wire_type.name}{hint}"
        )
    return spec


def count_rows(rules: InputRules, arrays: Mapping[str, np.ndarray]) -> int:
    """Check the decoded inputs as a whole; return the request's row count.

    Names and datatypes were checked by `input_spec` while decoding, and the decoders make
    arrays of the declared dtype.
    """
    rows: int | None = None
    for spec in rules.signature.inputs:
        array = arrays.get(spec.name)
        if array is None:
            raise InvalidInput(f"missing input '{spec.name}'")
        if spec.datatype.name == "BF16":  # numpy and ONNX Runtime's Python API have no bfloat16
            raise Unsupported(f"input '{spec.name}': BF16 tensors are not supported")
        _check_shape(spec, array.shape, rules.variable_axes.get(spec.name))
        if rules.batchable:
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput(
                    f"input '{spec.name}': has {array.shape[0]} rows but other inputs have {rows}"
                )
            rows = array.shape[0]
    if rows is None:  # not batchable: one request is one run
        return 1
    if rows < 1:
        raise InvalidInput("the request has no rows")
    if rows > rules.max_rows:
        raise InvalidInput(
            f"the request has {rows} rows; this model takes at most {rules.max_rows} per "
            "request (its max_request_rows)"
        )
    return rows


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], variable_axis: int | None) -> None:
    if shape == (0,) and spec.shape and spec.shape[0] is None:
        raise InvalidInput(f"input '{spec.name}': the request has no rows")
    if len(shape) != len(spec.shape):
        raise InvalidInput(
            f"input '{spec.name}': expected shape {shape_text(spec.shape)} "
            f"(rank {len(spec.shape)}), got {shape_text(shape)} (rank {len(shape)})"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if want is not None and want != got and axis != variable_axis:
            raise InvalidInput(
                f"input '{spec.name}': expected shape {shape_text(spec.shape)}, got "
                f"{shape_text(shape)} (axis {axis} must be {want})"
            )
