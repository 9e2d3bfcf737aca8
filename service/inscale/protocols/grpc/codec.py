"""`ModelInferRequest` to numpy arrays and outputs back to a `ModelInferResponse`.

Inputs come either in `raw_input_contents` (what tritonclient and perf_analyzer send: one
entry per input, in order, in the binary form of `inscale.protocols.raw_tensors`, decoded with
`numpy.frombuffer`) or in each tensor's typed `contents`; FP16 and BF16 have no typed field, so
they are raw only, as the protocol says. Every size is checked against the declared shape
before anything is allocated, and each tensor's name and datatype are checked against the
model (`inscale.validation.input_spec`) before its data is decoded, with the same messages as
the HTTP protocols. Outputs are always answered in `raw_output_contents`, as Triton does.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from inscale.batch_arrays import Arrays
from inscale.datatypes import BY_NAME, DataType, from_name
from inscale.errors import InvalidInput, Unsupported
from inscale.protocols import raw_tensors
from inscale.protocols.grpc.stubs import service_pb2 as pb
from inscale.signature import Signature, shape_text
from inscale.validation import InputRules, input_spec

_DATATYPES = ", ".join(BY_NAME)
# The typed field of `InferTensorContents` each datatype travels in; FP16 and BF16 have none.
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CONTENT_FIELDS = frozenset(_CONTENTS.values())
# Fields shared by narrower types (INT8/16 in int_contents, UINT8/16 in uint_contents).
_WIRE_WIDTH = {"int_contents": np.dtype(np.int64), "uint_contents": np.dtype(np.uint64)}


@dataclass(slots=True)  # not frozen: see RequestedOutput in inscale.protocols.v2.codec
class GrpcInferRequest:
    id: str
    arrays: Arrays
    outputs: tuple[str, ...]  # what to answer, in this order
    timeout_s: float | None  # the `timeout` parameter; None: the model's own limit
    priority: int  # 0: the model's default level; 1 is the highest


def decode_request(request: Any, rules: InputRules) -> GrpcInferRequest:
    """`request` is a `ModelInferRequest` (protobuf messages are untyped for mypy)."""
    inputs = request.inputs
    if not inputs:
        raise InvalidInput('"inputs" must be a non-empty array of input tensors')
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but the request has {len(inputs)} "
            "inputs; send every input raw, in order, or none"
        )
    arrays: Arrays = {}
    for position, tensor in enumerate(inputs):
        name: str = tensor.name
        datatype = _datatype(tensor)
        shape = _shape(tensor)
        input_spec(rules, name, datatype)
        if name in arrays:
            raise InvalidInput(f"input '{name}' appears twice")
        if "shared_memory_region" in tensor.parameters:
            raise Unsupported(f"input '{name}': shared memory is not supported")
        has_contents = tensor.HasField("contents")
        if raw:
            if has_contents:
                raise InvalidInput(f"input '{name}' has both contents and raw_input_contents")
            data = memoryview(raw[position])
            raw_tensors.check_binary_size(name, datatype, shape, len(data), "raw_input_contents")
            arrays[name] = raw_tensors.from_binary(name, datatype, shape, data)
        elif has_contents:
            arrays[name] = _from_contents(name, datatype, shape, tensor.contents)
        else:
            raise InvalidInput(f"input '{name}' has neither contents nor raw_input_contents")
    parameters = request.parameters
    return GrpcInferRequest(
        id=request.id,
        arrays=arrays,
        outputs=_requested_outputs(request.outputs, rules.signature),
        timeout_s=_timeout(parameters),
        priority=_count(parameters, "priority", 'the "priority" parameter'),
    )


def encode_response(
    model: str, version: int, request: GrpcInferRequest, results: Arrays, signature: Signature
) -> Any:
    datatypes = {s.name: s.datatype for s in signature.outputs}
    response = pb.ModelInferResponse(model_name=model, model_version=str(version), id=request.id)
    for name in request.outputs:
        array = results[name]
        datatype = datatypes[name]
        response.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        response.raw_output_contents.append(bytes(raw_tensors.to_binary(datatype, array)))
    return response


# -- pieces of a request -------------------------------------------------------------------


def _datatype(tensor: Any) -> DataType:
    datatype = from_name(tensor.datatype) if tensor.datatype else None
    if datatype is None:
        raise InvalidInput(
            f"input '{tensor.name}': unknown datatype \"{tensor.datatype}\" "
            f"(expected one of {_DATATYPES})"
        )
    return datatype


def _shape(tensor: Any) -> list[int]:
    shape = list(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(
            f"input '{tensor.name}': \"shape\" must be an array of non-negative integers"
        )
    raw_tensors.check_shape(tensor.name, shape)  # no rank past 64, no size numpy cannot make
    return shape


def _from_contents(name: str, datatype: DataType, shape: list[int], contents: Any) -> np.ndarray:
    field = _CONTENTS.get(datatype.name)
    if field is None:
        raise InvalidInput(
            f"input '{name}': {datatype.name} data has no typed contents field; send it in "
            "raw_input_contents"
        )
    others = sorted(f for f in _CONTENT_FIELDS - {field} if len(getattr(contents, f)))
    if others:
        raise InvalidInput(
            f"input '{name}': datatype {datatype.name} travels in contents.{field}, "
            f"but the request fills contents.{others[0]}"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:  # before anything is allocated
        raise InvalidInput(
            f"input '{name}': shape {shape_text(shape)} has {count} elements but "
            f"contents.{field} has {len(values)}"
        )
    if datatype.name == "BYTES":
        return _strings(name, values).reshape(shape)
    # The wire's own width first: numpy refuses (OverflowError) to build a narrower array
    # from a value outside its range, and that must be the user's error, not a crash.
    wide = np.array(values, dtype=_WIRE_WIDTH.get(field, datatype.numpy))
    if datatype.numpy.kind in "iu" and wide.dtype != datatype.numpy and wide.size:
        info = np.iinfo(datatype.numpy)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidInput(f"input '{name}': values outside the range of {datatype.numpy}")
    return wide.astype(datatype.numpy, copy=False).reshape(shape)


def _strings(name: str, values: Any) -> np.ndarray:
    elements = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        try:
            # ONNX Runtime string tensors hold text: it turns bytes objects into "b'...'".
            elements[index] = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input '{name}': BYTES element {index} is not valid UTF-8, which ONNX Runtime "
                "string tensors need"
            ) from exc
    return elements


def _requested_outputs(requested: Any, signature: Signature) -> tuple[str, ...]:
    known = [s.name for s in signature.outputs]
    if not requested:
        return tuple(known)
    chosen: list[str] = []
    for output in requested:
        name: str = output.name
        if name not in known:
            raise InvalidInput(
                f"unknown output '{name}'; the model's outputs are: {', '.join(known)}"
            )
        if name in chosen:
            raise InvalidInput(f"output '{name}' is requested twice")
        for feature in ("classification", "shared_memory_region"):
            if feature in output.parameters:
                raise Unsupported(f"output '{name}': the {feature} parameter is not supported")
        chosen.append(name)
    return tuple(chosen)


def _count(parameters: Mapping[str, Any], key: str, what: str) -> int:
    if key not in parameters:
        return 0
    parameter = parameters[key]
    kind = parameter.WhichOneof("parameter_choice")
    value: object = getattr(parameter, kind) if kind else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        # Shown as HTTP shows the JSON value: `got -5`, `got "high"`, `got true`.
        raise InvalidInput(
            f"{what} must be a non-negative integer, got {orjson.dumps(value).decode()}"
        )
    return value


def _timeout(parameters: Mapping[str, Any]) -> float | None:
    micros = _count(parameters, "timeout", 'the "timeout" parameter (microseconds)')
    return None if micros == 0 else micros / 1_000_000
