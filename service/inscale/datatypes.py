"""One table of tensor datatypes: Open Inference Protocol name, numpy dtype, ONNX type.

Every other mapping (ONNX -> protocol, numpy -> protocol, Triton config names) is derived
from `_TABLE`, so a datatype is added or fixed in one line.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DataType:
    name: str  # protocol name, e.g. "FP32"
    numpy: np.dtype  # the dtype arrays of this type have in memory
    onnx: str  # ONNX Runtime's type string, e.g. "tensor(float)"

    @property
    def config_name(self) -> str:
        """Name in Triton's model config JSON (BYTES is TYPE_STRING there)."""
        return "TYPE_STRING" if self.name == "BYTES" else f"TYPE_{self.name}"

    @property
    def itemsize(self) -> int | None:
        """Bytes per element on the wire, None for variable-size BYTES."""
        return None if self.name == "BYTES" else self.numpy.itemsize


_TABLE: tuple[DataType, ...] = (
    DataType("BOOL", np.dtype(np.bool_), "tensor(bool)"),
    DataType("UINT8", np.dtype(np.uint8), "tensor(uint8)"),
    DataType("UINT16", np.dtype(np.uint16), "tensor(uint16)"),
    DataType("UINT32", np.dtype(np.uint32), "tensor(uint32)"),
    DataType("UINT64", np.dtype(np.uint64), "tensor(uint64)"),
    DataType("INT8", np.dtype(np.int8), "tensor(int8)"),
    DataType("INT16", np.dtype(np.int16), "tensor(int16)"),
    DataType("INT32", np.dtype(np.int32), "tensor(int32)"),
    DataType("INT64", np.dtype(np.int64), "tensor(int64)"),
    DataType("FP16", np.dtype(np.float16), "tensor(float16)"),
    DataType("FP32", np.dtype(np.float32), "tensor(float)"),
    DataType("FP64", np.dtype(np.float64), "tensor(double)"),
    # Strings travel as numpy object arrays of `str`/`bytes`, which is what ORT accepts.
    DataType("BYTES", np.dtype(np.object_), "tensor(string)"),
    # numpy has no bfloat16; BF16 payloads are kept as raw 16-bit words so a clear
    # "model cannot take BF16" error can be given instead of a decode failure.
    DataType("BF16", np.dtype(np.uint16), "tensor(bfloat16)"),
)

BY_NAME: dict[str, DataType] = {t.name: t for t in _TABLE}
BY_ONNX: dict[str, DataType] = {t.onnx: t for t in _TABLE}


def from_name(name: str) -> DataType | None:
    return BY_NAME.get(name.upper())


def from_onnx(onnx_type: str) -> DataType | None:
    return BY_ONNX.get(onnx_type)
