"""The simple `/predict` format, decoded to numpy arrays and encoded back.

Request:  {"model"?: str, "version"?: int, "timeout_ms"?: number, "priority"?: int,
           "inputs": array | {input_name: array}}
Response: {"model": str, "version": int, "outputs": {output_name: array}}

A bare array is allowed for a model with exactly one input.
"""

from dataclasses import dataclass
from typing import Any

from inscale.batch_arrays import Arrays
from inscale.errors import InvalidInput
from inscale.protocols.json_values import dumps, parse_object, to_array
from inscale.validation import InputRules, input_spec

_FIELDS = frozenset({"model", "version", "timeout_ms", "priority", "inputs"})


@dataclass(slots=True)  # not frozen: see RequestedOutput in inscale.protocols.v2.codec
class PredictRequest:
    model: str | None
    version: int | None
    timeout_s: float | None
    priority: int  # 0: the model's default level; 1 is the highest
    inputs: Any  # the raw JSON value, converted once the model (so the dtypes) is known


def parse_request(body: bytes) -> PredictRequest:
    document = parse_object(body, "the request body", 'a JSON object with an "inputs" field')
    if not _FIELDS.issuperset(document):  # no set built per request unless one is wrong
        unknown = sorted(set(document) - _FIELDS)
        raise InvalidInput(f"unknown field '{unknown[0]}' (expected: {', '.join(sorted(_FIELDS))})")
    if "inputs" not in document:
        raise InvalidInput('missing field "inputs"')
    model = document.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidInput('"model" must be a string')
    return PredictRequest(
        model=model,
        version=_version(document.get("version")),
        timeout_s=_timeout(document.get("timeout_ms")),
        priority=_priority(document.get("priority", 0)),
        inputs=document["inputs"],
    )


def _version(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput('"version" must be a positive integer')
    # isascii: str.isdigit also says yes to digits int() refuses ("²"); the length cap keeps
    # int() under Python's digit limit (a 5,000-digit string raises ValueError).
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= 20):
        raise InvalidInput('"version" must be a positive integer')
    if int(value) < 1:
        raise InvalidInput('"version" must be a positive integer')
    return int(value)


def _priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput('"priority" must be a non-negative integer (0: the default level)')
    return value


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidInput('"timeout_ms" must be a positive number')
    return float(value) / 1000


def to_arrays(raw: object, rules: InputRules) -> Arrays:
    """Convert the request's inputs to arrays of the model's declared dtypes."""
    if isinstance(raw, dict):
        arrays: Arrays = {}
        for name, value in raw.items():
            spec = input_spec(rules, name)
            arrays[name] = to_array(name, value, spec.datatype.numpy)
        return arrays
    if isinstance(raw, list):
        inputs = rules.signature.inputs
        if len(inputs) != 1:
            names = ", ".join(s.name for s in inputs)
            raise InvalidInput(
                f'this model has several inputs ({names}); send "inputs" as an object by name'
            )
        spec = input_spec(rules, inputs[0].name)
        return {spec.name: to_array(spec.name, raw, spec.datatype.numpy)}
    raise InvalidInput('"inputs" must be an array or an object mapping input names to arrays')


def encode_response(model: str, version: int, outputs: Arrays) -> bytes:
    return dumps({"model": model, "version": version, "outputs": outputs})
