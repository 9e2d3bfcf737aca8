"""Models and helpers shared by the Open Inference Protocol (V2) tests."""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from support.onnx_models import add_model, identity

# Every datatype ONNX Runtime takes that the protocol names: (protocol name, ONNX, numpy).
DATATYPES: list[tuple[str, int, type]] = [
    ("BOOL", TensorProto.BOOL, np.bool_),
    ("UINT8", TensorProto.UINT8, np.uint8),
    ("UINT16", TensorProto.UINT16, np.uint16),
    ("UINT32", TensorProto.UINT32, np.uint32),
    ("UINT64", TensorProto.UINT64, np.uint64),
    ("INT8", TensorProto.INT8, np.int8),
    ("INT16", TensorProto.INT16, np.int16),
    ("INT32", TensorProto.INT32, np.int32),
    ("INT64", TensorProto.INT64, np.int64),
    ("FP16", TensorProto.FLOAT16, np.float16),
    ("FP32", TensorProto.FLOAT, np.float32),
    ("FP64", TensorProto.DOUBLE, np.float64),
    ("BYTES", TensorProto.STRING, np.object_),
]


def add_datatype_models(repo: Path) -> None:
    """`id_<type>`: Identity x -> y of shape [N, 3] for every datatype."""
    for name, elem, _ in DATATYPES:
        add_model(repo, f"id_{name.lower()}", identity(elem, ("N", 3)))


def sample(datatype: str, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Values that exercise each type's range: extremes, negatives, non-ASCII strings."""
    shape = (rows, 3)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(np.bool_)
    if datatype == "BYTES":
        words = ["", "a", "héllo", "日本", "x" * 40, "tab\tand\nnewline"]
        return np.array(
            [[words[(r + c) % len(words)] for c in range(3)] for r in range(rows)], dtype=object
        )
    dtype: np.dtype[Any] = np.dtype(dict((n, t) for n, _, t in DATATYPES)[datatype])
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    values.flat[0], values.flat[-1] = info.min, info.max
    return values


def bf16_model() -> onnx.GraphProto:
    """x: BF16 [N, 2] -> y = float(x). ONNX Runtime runs it; numpy has no bfloat16 to feed it."""
    return helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )


def offset_model(offset: float, matmuls: int = 0, size: int = 256) -> onnx.GraphProto:
    """x: float [N, 4] -> y = x + offset, after `matmuls` MatMuls of size x size on every run.

    The work does not depend on the input, so warm-up takes as long as a request: a version
    with many MatMuls is slow to become ready.
    """
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "w"], ["state_out"]),
        ],
        "work",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [size, size]),
        ],
    )
    return helper.make_graph(
        [
            helper.make_node("Loop", ["trips", "true", "start"], ["final"], body=body),
            helper.make_node("ReduceSum", ["final"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["offset", "nothing"], ["shift"]),
            helper.make_node("Add", ["x", "shift"], ["y"]),
        ],
        "offset",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.eye(size, dtype=np.float32), "start"),
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array(matmuls, dtype=np.int64), "trips"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array(offset, dtype=np.float32), "offset"),
        ],
    )


def v2_infer_body(name: str, rows: list[list[float]], datatype: str = "FP32") -> dict[str, Any]:
    return {
        "inputs": [
            {"name": name, "shape": [len(rows), len(rows[0])], "datatype": datatype, "data": rows}
        ]
    }


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    """Poll observable server state (never sleep for a fixed time and hope)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def model_counters(url: str, model: str) -> dict[str, Any]:
    """The batcher's live counters (queued, running, ...) from `GET /models/{name}`."""
    versions = httpx.get(f"{url}/models/{model}", timeout=10).json()["versions"]
    return versions[-1]["stats"]  # type: ignore[no-any-return]
