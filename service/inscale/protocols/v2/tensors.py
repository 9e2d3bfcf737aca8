"""One V2 tensor's JSON `data`, in both directions (the binary form: `raw_tensors`).

Counts are checked against the declared shape, and no value is silently truncated.
"""

import math
from collections.abc import Sequence

import numpy as np

from inscale.datatypes import DataType
from inscale.errors import InvalidInput
from inscale.protocols.json_values import to_array
from inscale.signature import shape_text

_FP32 = np.dtype(np.float32)


def from_json(name: str, datatype: DataType, shape: Sequence[int], data: object) -> np.ndarray:
    """The input's array from its `data` field, nested or flat, with its count checked."""
    if datatype.name == "BF16":
        array = _bf16_words(to_array(name, data, _FP32))
    elif datatype.name == "UINT64":
        array = _uint64(name, data)
    else:
        array = to_array(name, data, datatype.numpy)
    count = math.prod(shape)
    if array.size != count:
        raise InvalidInput(
            f"input '{name}': shape {shape_text(shape)} has {count} elements but data has "
            f"{array.size}"
        )
    return array.reshape(shape)


def _uint64(name: str, data: object) -> np.ndarray:
    try:
        return to_array(name, data, np.dtype(np.uint64))
    except InvalidInput:
        pass
    # numpy reads integers from 2**63 up as float64: take them if every value is an integer.
    values = np.array(data, dtype=object)
    flat = values.reshape(-1)
    if not all(type(v) is int and 0 <= v < 2**64 for v in flat):
        raise InvalidInput(f"input '{name}': expected integers from 0 to 2**64 - 1")
    return flat.astype(np.uint64).reshape(values.shape)


def _bf16_words(floats: np.ndarray) -> np.ndarray:
    """BF16 is the upper half of an FP32 (rounded to nearest even); numpy has no bfloat16."""
    bits = floats.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def to_json_data(datatype: DataType, array: np.ndarray) -> object:
    """The output's flat `data` (row-major), in a form orjson serialises directly."""
    if datatype.name == "BYTES":
        return [
            e.decode("utf-8", "replace") if isinstance(e, bytes) else str(e)
            for e in array.reshape(-1)
        ]
    if datatype.name == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32).reshape(-1)
    return np.ascontiguousarray(array).reshape(-1)
