"""Hypothesis strategies for request bodies: valid ones (with the arrays they carry, so an answer
can be checked) and valid-ish ones, a valid request with one to three things broken the way
clients and attackers break them (wrong types, nested lists, unknown datatypes, NaN, huge or
zero dims, binary sizes that disagree, header lengths past the body, bytes left over).

A `WireRequest` is what goes on the wire: body, headers and, when nothing was broken, the
arrays it carries. Bodies are written with the standard library's `json.dumps`, which writes
NaN and Infinity as bare words, as Triton and perf_analyzer do.
"""

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from support.fuzz_models import Port

DATATYPES = (
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES", "BF16",
)  # fmt: skip
_NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT64": np.uint64, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "BYTES": np.object_,
}  # fmt: skip
# Shapes that have broken decoders elsewhere: a zero dim beside a huge one (nothing to
# allocate, but numpy cannot make the shape), ranks past numpy's 64, a billion rows.
NASTY_SHAPES: tuple[object, ...] = (
    [], [0], [-1, 4], [1, -4], [1.5, 4], ["1", 4], [True, 4], [[1], 4], "1,4", None,
    [1_000_000_000, 64], [0, 10**30], [10**30, 0], [2**64 - 1, 0], [2**63, 2], [1] * 70,
    [0] * 70, [1, 4, 1], [4], [2**31, 2**31],
)  # fmt: skip
NASTY_LENGTHS = ("²", "\uff11\uff12", "-1", "1e3", "0x10", " ", "9" * 5000, "18446744073709551617")


@dataclass
class WireRequest:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] | None = None  # None: the request was broken on purpose
    binary_outputs: bool = False

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return f"WireRequest(body={self.body!r}, headers={self.headers!r})"


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, including the awkward ones: NaN, huge integers, lone surrogates."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=6),
        st.just("\ud800"),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=8,
    )


def _elements(datatype: str, finite: bool) -> st.SearchStrategy[Any]:
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.text(st.characters(codec="utf-8"), max_size=6)
    if datatype.startswith("FP"):
        width = int(datatype[2:])
        return st.floats(width=width, allow_nan=not finite, allow_infinity=not finite)  # type: ignore[arg-type]
    info = np.iinfo(_NUMPY[datatype])
    return st.integers(int(info.min), int(info.max))


@st.composite
def valid_arrays(
    draw: st.DrawFn, ports: tuple[Port, ...], finite: bool = False
) -> dict[str, np.ndarray]:
    rows = draw(st.integers(1, 3))
    arrays = {}
    for port in ports:
        dtype = np.dtype(_NUMPY[port.datatype])
        shape = (rows, *port.dims)
        if port.datatype == "BYTES":
            values = draw(st.lists(_elements("BYTES", finite), min_size=rows * port.dims[0]))
            array = np.array(values[: rows * port.dims[0]], dtype=object).reshape(shape)
        else:
            array = draw(hnp.arrays(dtype, shape, elements=_elements(port.datatype, finite)))
        arrays[port.name] = array
    return arrays


def binary_tensor(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        raw = [str(e).encode() for e in array.reshape(-1)]
        return b"".join(struct.pack("<I", len(r)) + r for r in raw)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _json_data(array: np.ndarray, flat: bool) -> Any:
    values = array.reshape(-1).tolist() if flat else array.tolist()
    return values


@dataclass
class V2Draft:
    """A V2 request before it is written out; mutations edit it."""

    document: Any
    parts: list[bytes]
    header_length: str | None = "auto"  # "auto": the JSON's length; None: no header
    trailing: bytes = b""
    cut: int | None = None  # keep only this many bytes of the body

    def render(self) -> tuple[bytes, dict[str, str]]:
        text = json.dumps(self.document).encode()
        body = text + b"".join(self.parts) + self.trailing
        if self.cut is not None:
            body = body[: self.cut]
        headers = {}
        if self.header_length == "auto":
            if self.parts:
                headers["Inference-Header-Content-Length"] = str(len(text))
        elif self.header_length is not None:
            headers["Inference-Header-Content-Length"] = self.header_length
        return body, headers


@st.composite
def v2_drafts(
    draw: st.DrawFn, ports: tuple[Port, ...]
) -> tuple[V2Draft, dict[str, np.ndarray], bool]:
    arrays = draw(valid_arrays(ports))
    inputs, parts = [], []
    for port in ports:
        array = arrays[port.name]
        tensor: dict[str, Any] = {
            "name": port.name,
            "datatype": port.datatype,
            "shape": list(array.shape),
        }
        form = draw(st.sampled_from(["nested", "flat", "binary"]))
        if form == "binary":
            raw = binary_tensor(port.datatype, array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            parts.append(raw)
        else:
            tensor["data"] = _json_data(array, form == "flat")
        inputs.append(tensor)
    binary_outputs = draw(st.booleans())
    document: dict[str, Any] = {"inputs": inputs}
    if binary_outputs:
        document["parameters"] = {"binary_data_output": True}
    if draw(st.booleans()):
        document["id"] = draw(st.text(st.characters(codec="utf-8"), max_size=8))
    return V2Draft(document, parts), arrays, binary_outputs


Mutation = Callable[[st.DrawFn, V2Draft], None]


def _inputs(draft: V2Draft) -> list[dict[str, Any]] | None:
    """The draft's input tensors, or None once an earlier mutation has broken them."""
    document = draft.document
    inputs = document.get("inputs") if isinstance(document, dict) else None
    if isinstance(inputs, list) and inputs and all(isinstance(i, dict) for i in inputs):
        return inputs
    return None


def _some_input(draw: st.DrawFn, draft: V2Draft) -> dict[str, Any]:
    """One input tensor to break (a throwaway one when there is none left)."""
    inputs = _inputs(draft)
    if inputs is None:
        return {}
    item: dict[str, Any] = draw(st.sampled_from(inputs))
    return item


def _datatype(draw: st.DrawFn, draft: V2Draft) -> None:
    names = st.sampled_from([*DATATYPES, "fp32", "FP128", "", "STRING"])
    _some_input(draw, draft)["datatype"] = draw(st.one_of(names, json_values()))


def _shape(draw: st.DrawFn, draft: V2Draft) -> None:
    item = _some_input(draw, draft)
    item["shape"] = draw(
        st.one_of(
            st.sampled_from(NASTY_SHAPES),
            st.lists(st.integers(-1, 2**64), max_size=4),
            json_values(),
        )
    )


def _data(draw: st.DrawFn, draft: V2Draft) -> None:
    item = _some_input(draw, draft)
    old = item.get("data")
    old = old if isinstance(old, list) else [old]
    item.pop("parameters", None)  # it becomes a JSON tensor (its binary part is left over)
    item["data"] = draw(
        st.one_of(json_values(), st.just([old, old]), st.just([old]), st.just([[*old, 1], old]))
    )


def _binary_size(draw: st.DrawFn, draft: V2Draft) -> None:
    item = _some_input(draw, draft)
    declared = item.get("parameters", {}).get("binary_data_size", 0)
    # An earlier mutation may have made the parameter anything (null, a string): start from 0.
    size = declared if isinstance(declared, int) and not isinstance(declared, bool) else 0
    value = draw(
        st.one_of(
            st.sampled_from([size + 1, size - 1, 0, 2**40, 2**64 - 1, -1]),
            st.integers(0, 64),
            json_values(),
        )
    )
    item["parameters"] = {"binary_data_size": value}
    if draw(st.booleans()) and "data" not in item:
        item["data"] = [0]  # both data and binary_data_size


def _header_length(draw: st.DrawFn, draft: V2Draft) -> None:
    text = len(json.dumps(draft.document).encode())
    total = text + sum(len(p) for p in draft.parts)
    draft.header_length = draw(
        st.one_of(
            st.sampled_from([str(text + 1), str(text - 1), str(total + 1), "0", str(10**12)]),
            st.sampled_from(NASTY_LENGTHS),
            st.none(),
        )
    )


def _trailing(draw: st.DrawFn, draft: V2Draft) -> None:
    draft.trailing = draw(st.binary(min_size=1, max_size=16))


def _cut(draw: st.DrawFn, draft: V2Draft) -> None:
    body, _ = draft.render()
    draft.cut = draw(st.integers(0, max(0, len(body) - 1)))


def _names(draw: st.DrawFn, draft: V2Draft) -> None:
    inputs = _inputs(draft)
    if inputs is None:
        return
    choice = draw(st.sampled_from(["duplicate", "drop", "rename", "untyped", "empty"]))
    if choice == "duplicate":
        inputs.append(dict(inputs[0]))
    elif choice == "drop" and len(inputs) > 1:
        inputs.pop(draw(st.integers(0, len(inputs) - 1)))
    elif choice == "rename":
        _some_input(draw, draft)["name"] = draw(st.text(max_size=8))
    elif choice == "untyped":
        _some_input(draw, draft)["name"] = draw(json_values())
    else:
        draft.document["inputs"] = draw(st.sampled_from([[], {}, None, [None], [[]]]))


def _parameters(draw: st.DrawFn, draft: V2Draft) -> None:
    if not isinstance(draft.document, dict):
        return
    keys = st.sampled_from(["binary_data_output", "priority", "timeout", "sequence_id"])
    draft.document["parameters"] = draw(
        st.one_of(json_values(), st.dictionaries(keys, json_values(), min_size=1, max_size=3))
    )


def _outputs(draw: st.DrawFn, draft: V2Draft) -> None:
    if not isinstance(draft.document, dict):
        return
    entry = st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["x_twice", "y", "s_same"]), json_values())},
        optional={
            "parameters": st.one_of(
                json_values(),
                st.fixed_dictionaries(
                    {},
                    optional={
                        "binary_data": json_values(),
                        "classification": json_values(),
                        "shared_memory_region": json_values(),
                    },
                ),
            )
        },
    )
    draft.document["outputs"] = draw(st.one_of(json_values(), st.lists(entry, max_size=3)))


def _request_fields(draw: st.DrawFn, draft: V2Draft) -> None:
    if not isinstance(draft.document, dict):
        return
    key = draw(st.sampled_from(["id", "inputs", "model_name"]))
    draft.document[key] = draw(json_values())


def _shared_memory(draw: st.DrawFn, draft: V2Draft) -> None:
    item = _some_input(draw, draft)
    item["parameters"] = {"shared_memory_region": draw(json_values())}


def _not_an_object(draw: st.DrawFn, draft: V2Draft) -> None:
    draft.document = draw(json_values())


MUTATIONS: tuple[Mutation, ...] = (
    _datatype, _shape, _data, _binary_size, _header_length, _trailing, _cut, _names,
    _parameters, _outputs, _request_fields, _shared_memory, _not_an_object,
)  # fmt: skip


@st.composite
def v2_requests(
    draw: st.DrawFn, ports: tuple[Port, ...], broken: bool | None = None
) -> WireRequest:
    """A V2 infer request; `broken`: True always breaks it, None breaks it half the time."""
    draft, arrays, binary_outputs = draw(v2_drafts(ports))
    if broken is None:
        broken = draw(st.booleans())
    if broken:
        for mutate in draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
            mutate(draw, draft)
    body, headers = draft.render()
    return WireRequest(body, headers, None if broken else arrays, binary_outputs)


@st.composite
def predict_requests(
    draw: st.DrawFn, model: str, ports: tuple[Port, ...], broken: bool | None = None
) -> WireRequest:
    """A `/predict` body; strict JSON, so valid inputs are finite."""
    arrays = draw(valid_arrays(ports, finite=True))
    document: dict[str, Any] = {"model": model}
    if len(ports) == 1 and draw(st.booleans()):
        document["inputs"] = arrays[ports[0].name].tolist()  # a bare array
    else:
        document["inputs"] = {name: a.tolist() for name, a in arrays.items()}
    if draw(st.booleans()):
        document["timeout_ms"] = draw(st.integers(10_000, 60_000))
    if broken is None:
        broken = draw(st.booleans())
    text = None
    if broken:
        field_name = draw(st.sampled_from(["inputs", "one", "model", "version", "timeout_ms", "x"]))
        if field_name == "one" and isinstance(document["inputs"], dict):
            name = draw(st.sampled_from(sorted(document["inputs"])))
            document["inputs"][name] = draw(json_values())
        elif field_name == "version":
            document["version"] = draw(st.one_of(json_values(), st.sampled_from(NASTY_LENGTHS)))
        else:
            document[field_name] = draw(json_values())
        if draw(st.integers(0, 4)) == 0:
            text = draw(st.binary(max_size=32))  # not JSON at all
    body = json.dumps(document).encode() if text is None else text
    return WireRequest(body, {"Content-Type": "application/json"}, None if broken else arrays)
