"""Infer requests and responses of the Open Inference Protocol, to and from numpy arrays.

A request body is a JSON header followed by the binary tensors it declares with
`binary_data_size`, concatenated in the order of `inputs`; the `Inference-Header-Content-Length`
header says where the JSON ends. Without that header the body is all JSON. With it set to 0
the body is one raw tensor for a single-input model, batch 1, and every output comes back
binary. Responses mirror the request: binary outputs follow the JSON header.

Decoding checks everything the wire can get wrong (sizes, element counts, lengths) before an
array is made, and asks `inscale.validation.input_spec` which model input each tensor is and
whether its datatype is the model's. Dims against the model's, and completeness, are checked
by the data plane, also before anything is queued.
"""

import math
from dataclasses import dataclass
from typing import Any

import orjson

from inscale.batch_arrays import Arrays
from inscale.datatypes import BY_NAME, DataType, from_name
from inscale.errors import InvalidInput, Unsupported, quoted
from inscale.protocols import raw_tensors
from inscale.protocols.json_values import dumps, parse_object
from inscale.protocols.v2 import tensors
from inscale.signature import Signature, TensorSpec, shape_text
from inscale.validation import InputRules, input_spec

HEADER_LENGTH = "inference-header-content-length"
_DATATYPES = ", ".join(BY_NAME)


# Per-request values are plain slotted dataclasses, not frozen ones: a frozen dataclass's
# __init__ sets each field through object.__setattr__, five times the cost (1.9 against 0.4 us
# for five fields on these machines), paid by every request.
@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(slots=True)
class InferRequest:
    id: str | None
    arrays: Arrays
    outputs: tuple[RequestedOutput, ...]  # what to answer, in this order
    timeout_s: float | None  # the `timeout` parameter; None: the model's own limit
    priority: int  # 0: the model's default level; 1 is the highest


def parse_header_length(value: str | None) -> int | None:
    if value is None:
        return None
    text = value.strip()
    # isascii: str.isdigit also says yes to digits int() refuses ("²"); the length cap keeps
    # int() under Python's digit limit (a 5,000-digit number raises ValueError).
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise InvalidInput(f"Inference-Header-Content-Length {quoted(value)} is not a byte count")
    return int(text)


def decode_request(body: bytes, header_length: int | None, rules: InputRules) -> InferRequest:
    signature = rules.signature
    if header_length == 0:
        return _raw_request(body, rules)
    if header_length is not None and header_length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length is {header_length} but the body has only "
            f"{len(body)} bytes"
        )
    end = len(body) if header_length is None else header_length
    document = parse_object(
        body if end == len(body) else body[:end],
        "the request body" if header_length is None else "the JSON header",
        'a JSON object with "inputs"',
        nan_words=True,
    )
    binary = memoryview(body)[end:]
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('"inputs" must be a non-empty array of input tensors')
    arrays: Arrays = {}
    offset = 0
    for position, item in enumerate(inputs):
        name, datatype, shape, params = _tensor_header(item, position)
        input_spec(rules, name, datatype)
        if name in arrays:
            raise InvalidInput(f"input '{name}' appears twice")
        if "shared_memory_region" in params:
            raise Unsupported(f"input '{name}': shared memory is not supported")
        if "binary_data_size" in params:
            size = _count(params["binary_data_size"], f"input '{name}': binary_data_size")
            if "data" in item:
                raise InvalidInput(f"input '{name}' has both data and binary_data_size")
            raw_tensors.check_binary_size(name, datatype, shape, size)
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} goes past the end of the body "
                    f"({len(binary) - offset} bytes of binary data left)"
                )
            arrays[name] = raw_tensors.from_binary(
                name, datatype, shape, binary[offset : offset + size]
            )
            offset += size
        elif "data" in item:
            arrays[name] = tensors.from_json(name, datatype, shape, item["data"])
        else:
            raise InvalidInput(f"input '{name}' has neither data nor binary_data_size")
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary) - offset} bytes of binary data that no input claims"
        )
    parameters = _parameters(document.get("parameters"), "the request")
    default_binary = _flag(parameters, "binary_data_output", "the request")
    return InferRequest(
        id=_request_id(document.get("id")),
        arrays=arrays,
        outputs=_requested_outputs(document.get("outputs"), signature, default_binary),
        timeout_s=_timeout(parameters),
        priority=_count(parameters.get("priority", 0), 'the "priority" parameter'),
    )


def encode_response(
    model: str, version: int, request: InferRequest, results: Arrays, signature: Signature
) -> tuple[bytes, int | None]:
    """The body and, when any output is binary, the length of its JSON header."""
    datatypes = {s.name: s.datatype for s in signature.outputs}
    described: list[dict[str, Any]] = []
    binary_parts: list[bytes | memoryview] = []
    for choice in request.outputs:
        array = results[choice.name]
        datatype = datatypes[choice.name]
        entry: dict[str, Any] = {
            "name": choice.name,
            "datatype": datatype.name,
            "shape": list(array.shape),
        }
        if choice.binary:
            raw = raw_tensors.to_binary(datatype, array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            entry["data"] = tensors.to_json_data(datatype, array)  # never "parameters": {}
        described.append(entry)
    document: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request.id is not None:
        document["id"] = request.id
    document["outputs"] = described
    header = dumps(document)
    if not binary_parts:
        return header, None
    return b"".join([header, *binary_parts]), len(header)


# -- pieces of a request -------------------------------------------------------------------


def _tensor_header(item: object, position: int) -> tuple[str, DataType, list[int], dict[str, Any]]:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise InvalidInput(f'inputs[{position}] must be an object with a string "name"')
    name: str = item["name"]
    raw_type = item.get("datatype")
    datatype = from_name(raw_type) if isinstance(raw_type, str) else None
    if datatype is None:
        raise InvalidInput(
            f"input '{name}': unknown datatype {orjson.dumps(raw_type).decode()} "
            f"(expected one of {_DATATYPES})"
        )
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"input '{name}': \"shape\" must be an array of non-negative integers")
    raw_tensors.check_shape(name, shape)  # before any size is computed or array made from it
    return name, datatype, shape, _parameters(item.get("parameters"), f"input '{name}'")


def _requested_outputs(
    raw: object, signature: Signature, default_binary: bool
) -> tuple[RequestedOutput, ...]:
    if raw is None or raw == []:
        # From a list: tuple(generator) over-allocates and shrinks, and each request would
        # leave a tuple on CPython's free lists until they fill (see the batcher's queue times).
        return tuple([RequestedOutput(s.name, default_binary) for s in signature.outputs])
    if not isinstance(raw, list):
        raise InvalidInput('"outputs" must be an array of {"name": ...} objects')
    known = [s.name for s in signature.outputs]
    chosen: list[RequestedOutput] = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f'outputs[{position}] must be an object with a string "name"')
        name: str = item["name"]
        if name not in known:
            raise InvalidInput(
                f"unknown output '{name}'; the model's outputs are: {', '.join(known)}"
            )
        if any(c.name == name for c in chosen):
            raise InvalidInput(f"output '{name}' is requested twice")
        params = _parameters(item.get("parameters"), f"output '{name}'")
        for feature in ("classification", "shared_memory_region"):
            if params.get(feature):
                raise Unsupported(f"output '{name}': the {feature} parameter is not supported")
        binary = _flag(params, "binary_data", f"output '{name}'", default_binary)
        chosen.append(RequestedOutput(name, binary))
    return tuple(chosen)


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f'{where}: "parameters" must be an object')
    return value


def _flag(params: dict[str, Any], key: str, where: str, default: bool = False) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInput(f'{where}: the "{key}" parameter must be true or false')
    return value


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(
            f"{what} must be a non-negative integer, got {orjson.dumps(value).decode()}"
        )
    return value


def _timeout(parameters: dict[str, Any]) -> float | None:
    if "timeout" not in parameters:
        return None
    micros = _count(parameters["timeout"], 'the "timeout" parameter (microseconds)')
    return None if micros == 0 else micros / 1_000_000


def _request_id(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput('"id" must be a string')


# -- a raw body: one tensor, no JSON -------------------------------------------------------


def _raw_request(body: bytes, rules: InputRules) -> InferRequest:
    signature = rules.signature
    if len(signature.inputs) != 1:
        names = ", ".join(s.name for s in signature.inputs)
        raise InvalidInput(
            "a raw binary body (Inference-Header-Content-Length: 0) needs a model with exactly "
            f"one input; this one has {len(signature.inputs)} ({names})"
        )
    spec = input_spec(rules, signature.inputs[0].name)
    data = memoryview(body)
    shape = _raw_shape(spec, data, signature.batchable)
    array = raw_tensors.from_binary(spec.name, spec.datatype, shape, data)
    outputs = tuple([RequestedOutput(s.name, True) for s in signature.outputs])
    return InferRequest(None, {spec.name: array}, outputs, None, 0)


def _raw_shape(spec: TensorSpec, data: memoryview, batchable: bool) -> list[int]:
    """The declared dims, batch 1; one variable dim may be inferred from the byte count."""
    dims = list(spec.shape)
    if batchable:
        dims[0] = 1
    unknown = [axis for axis, d in enumerate(dims) if d is None]
    itemsize = spec.datatype.itemsize
    if itemsize is None:
        elements = raw_tensors.bytes_element_count(data)
    elif len(data) % itemsize:
        raise InvalidInput(
            f"input '{spec.name}': the raw body's {len(data)} bytes are not a whole number of "
            f"{spec.datatype.name} elements"
        )
    else:
        elements = len(data) // itemsize
    known = math.prod(d for d in dims if d is not None)
    if len(unknown) > 1:
        raise InvalidInput(
            f"input '{spec.name}' has shape {shape_text(spec.shape)}: a raw binary body cannot say "
            "how long each variable dim is; send a JSON header with the shape"
        )
    if unknown and known and elements % known == 0:
        dims[unknown[0]] = elements // known
    resolved = [d for d in dims if d is not None]
    if len(resolved) != len(dims) or math.prod(resolved) != elements:
        raise InvalidInput(
            f"input '{spec.name}': the raw body holds {elements} {spec.datatype.name} elements, "
            f"which do not fill shape {shape_text(spec.shape)} with batch 1"
        )
    return resolved
