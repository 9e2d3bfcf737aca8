"""Tensors in the binary form both protocols share: V2's binary extension over HTTP and the
raw contents of gRPC (`raw_input_contents`, `raw_output_contents`).

Little-endian and row-major with no padding; BOOL is one byte per element, and each BYTES
element is a 4-byte little-endian length followed by its bytes. Fixed-size inputs become
arrays with `numpy.frombuffer`, a view of the request's bytes: no copy.

Every size is checked against the declared shape before anything is allocated, so a request
that declares a huge shape costs a multiplication, not memory.
"""

import math
import struct
from collections.abc import Sequence

import numpy as np

from inscale.datatypes import DataType
from inscale.errors import InvalidInput
from inscale.signature import shape_text

_LENGTH = struct.Struct("<I")
# numpy's limits on a shape, even of an empty array: at most 64 dims, and the product of the
# non-zero dims times the item size under 2**63 (so [0, 10**30] is no shape at all).
MAX_RANK = 64
MAX_ELEMENTS = 2**59


def check_shape(name: str, shape: Sequence[int]) -> None:
    """Refuse a declared shape no array can have, before any size is computed from it."""
    if len(shape) > MAX_RANK:
        raise InvalidInput(
            f"input '{name}': shape has {len(shape)} dims; at most {MAX_RANK} are supported"
        )
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise InvalidInput(
            f"input '{name}': shape {shape_text(shape)} is too large for any tensor "
            f"(more than 2**59 elements, even leaving out its zero dims)"
        )


def byte_size(datatype: DataType, shape: Sequence[int]) -> int | None:
    """Bytes a binary tensor of this shape takes; None for BYTES (variable-size elements)."""
    itemsize = datatype.itemsize
    return None if itemsize is None else math.prod(shape) * itemsize


def check_binary_size(
    name: str, datatype: DataType, shape: Sequence[int], size: int, what: str = "binary_data_size"
) -> None:
    need = byte_size(datatype, shape)
    if need is not None and size != need:
        raise InvalidInput(
            f"input '{name}': {what} is {size} bytes but shape "
            f"{shape_text(shape)} of {datatype.name} needs {need} bytes"
        )


def from_binary(
    name: str, datatype: DataType, shape: Sequence[int], data: memoryview
) -> np.ndarray:
    """The input's array, viewing `data` (the caller has cut it out of the body)."""
    check_shape(name, shape)
    if datatype.name == "BYTES":
        return _from_bytes_elements(name, shape, data)
    check_binary_size(name, datatype, shape, len(data))
    wire = datatype.numpy.newbyteorder("<")
    array = np.frombuffer(data, dtype=wire).reshape(shape)
    return array.astype(datatype.numpy, copy=False)  # no copy on little-endian machines


def _from_bytes_elements(name: str, shape: Sequence[int], data: memoryview) -> np.ndarray:
    count = math.prod(shape)
    if count * _LENGTH.size > len(data):  # every element has at least its length prefix
        raise InvalidInput(
            f"input '{name}': shape {shape_text(shape)} needs {count} BYTES elements but the "
            f"{len(data)} bytes of binary data cannot hold that many"
        )
    elements = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH.size > len(data):
            raise InvalidInput(
                f"input '{name}': binary data holds {index} BYTES elements but shape "
                f"{shape_text(shape)} needs {count}"
            )
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise InvalidInput(
                f"input '{name}': BYTES element {index} claims {length} bytes but only "
                f"{len(data) - offset} remain"
            )
        try:
            # ONNX Runtime string tensors hold text: it turns bytes objects into "b'...'".
            elements[index] = str(data[offset : offset + length], "utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input '{name}': BYTES element {index} is not valid UTF-8, which ONNX Runtime "
                "string tensors need"
            ) from exc
        offset += length
    if offset != len(data):
        raise InvalidInput(
            f"input '{name}': binary data has {len(data) - offset} bytes after the {count} "
            f"BYTES elements that shape {shape_text(shape)} holds"
        )
    return elements.reshape(shape)


def bytes_element_count(data: memoryview) -> int:
    """How many length-prefixed elements `data` holds (for a raw body, whose shape is implied)."""
    count = offset = 0
    while offset + _LENGTH.size <= len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size + length
        count += 1
    return count


def to_binary(datatype: DataType, array: np.ndarray) -> memoryview | bytes:
    """The output's bytes: a view of the array when it is already contiguous little-endian."""
    if datatype.name == "BYTES":
        parts = []
        for element in array.reshape(-1):
            raw = element if isinstance(element, bytes) else str(element).encode("utf-8")
            parts.append(_LENGTH.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return little.reshape(-1).view(np.uint8).data
