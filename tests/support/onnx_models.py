"""Tiny ONNX models built with onnx.helper, so tests need no files and no downloads."""

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

Dim = int | str | None
OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="inscale-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def add_model(
    repo: Path,
    name: str,
    graph: onnx.GraphProto,
    *,
    version: int = 1,
    config: Mapping[str, object] | None = None,
) -> Path:
    """Write `repo/name/version/model.onnx` and, when given, `repo/name/config.yaml`."""
    path = _save(graph, repo / name / str(version) / "model.onnx")
    if config is not None:
        (repo / name / "config.yaml").write_text(yaml.safe_dump(dict(config)))
    return path


def identity(elem: int = TensorProto.FLOAT, shape: Sequence[Dim] = ("N", 4)) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, list(shape))],
        [helper.make_tensor_value_info("y", elem, list(shape))],
    )


def two_in_two_out() -> onnx.GraphProto:
    """x: float [N,3], idx: int64 [N,2]. scaled = 2*x; picked[n, j] = x[n, idx[n, j]].

    GatherElements raises at run time on an out-of-range index, which tests use for a model
    whose run fails.
    """
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    return helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["scaled"]),
            helper.make_node("GatherElements", ["x", "idx"], ["picked"], axis=1),
        ],
        "two_in_two_out",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 2]),
        ],
        [
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["N", 2]),
        ],
        initializer=[two],
    )


def variable_length() -> onnx.GraphProto:
    """tokens: float [N, seq]. doubled: [N, seq] = 2*tokens; total: [N] = sum over seq.

    Zero padding leaves `total` unchanged, and `doubled` shares the `seq` dim so the server
    trims it back to each request's length.
    """
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    return helper.make_graph(
        [
            helper.make_node("Mul", ["tokens", "two"], ["doubled"]),
            helper.make_node("ReduceSum", ["tokens", "axes"], ["total"], keepdims=0),
        ],
        "variable_length",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", "seq"])],
        [
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["N", "seq"]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"]),
        ],
        initializer=[two, axes],
    )


def fixed_batch() -> onnx.GraphProto:
    """A model with no dynamic batch axis: x float [2, 3] -> y = x + 1. Not batchable."""
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    return helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[one],
    )


def busy(size: int = 256) -> onnx.GraphProto:
    """x: float [N, 4], work: int64 [N] -> y = x, after max(work) MatMuls of size x size.

    The caller chooses how long a run takes: a request with a large `work` holds an instance
    (seconds), one with work 0 is instant. Tests use it to put requests in a known state
    (running, queued) and observe that state through the public stats.
    """
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["state_in", "w"], ["state_out"]),
        ],
        "busy_body",
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
    nodes = [
        helper.make_node("ReduceMax", ["work"], ["trips"], keepdims=0),
        helper.make_node("Loop", ["trips", "true", "start"], ["final"], body=body),
        helper.make_node("ReduceSum", ["final"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["x", "nothing"], ["y"]),  # y == x once the work is done
    ]
    return helper.make_graph(
        nodes,
        "busy",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("work", TensorProto.INT64, ["N"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.eye(size, dtype=np.float32), "start"),
            numpy_helper.from_array(np.array(True), "true"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )
