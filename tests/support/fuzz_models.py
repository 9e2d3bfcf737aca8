"""The models the fuzz tests serve, and ONNX Runtime run directly on them: the reference a
served answer must equal.

`mixed` has one input of each kind of element the decoders treat differently (floats that may
be NaN, 64-bit integers, FP16, UINT8/UINT64, strings, booleans), so one request exercises the
binary offsets of several tensors and every JSON conversion; `scale` is a single FP32 input,
for bare `/predict` arrays and the raw binary body.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from inscale.datatypes import BY_NAME
from inscale.signature import Signature, TensorSpec
from inscale.validation import InputRules
from support.onnx_models import add_model


@dataclass(frozen=True)
class Port:
    """One model input and the output computed from it."""

    name: str
    datatype: str  # the protocol's name
    dims: tuple[int, ...]  # after the batch dim
    output: str


MIXED = (
    Port("x", "FP32", (4,), "x_twice"),
    Port("k", "INT64", (3,), "k_next"),
    Port("h", "FP16", (2,), "h_same"),
    Port("u", "UINT8", (2,), "u_same"),
    Port("w", "UINT64", (1,), "w_same"),
    Port("s", "BYTES", (2,), "s_same"),
    Port("f", "BOOL", (2,), "f_not"),
)
SCALE = (Port("x", "FP32", (4,), "y"),)
MODELS = {"mixed": MIXED, "scale": SCALE}

_ELEM = {
    "FP32": TensorProto.FLOAT,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "UINT8": TensorProto.UINT8,
    "UINT64": TensorProto.UINT64,
    "BYTES": TensorProto.STRING,
    "BOOL": TensorProto.BOOL,
}


def _mixed_graph() -> object:
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["x_twice"]),
        helper.make_node("Add", ["k", "one"], ["k_next"]),
        helper.make_node("Identity", ["h"], ["h_same"]),
        helper.make_node("Identity", ["u"], ["u_same"]),
        helper.make_node("Identity", ["w"], ["w_same"]),
        helper.make_node("Identity", ["s"], ["s_same"]),
        helper.make_node("Not", ["f"], ["f_not"]),
    ]
    return helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info(p.name, _ELEM[p.datatype], ["N", *p.dims]) for p in MIXED],
        [helper.make_tensor_value_info(p.output, _ELEM[p.datatype], ["N", *p.dims]) for p in MIXED],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        ],
    )


def _scale_graph() -> object:
    return helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["y"]),
        ],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ],
    )


def write_fuzz_repository(repo: Path) -> dict[str, Path]:
    """Both models in `repo`, with no queue delay (fuzzing sends one request at a time)."""
    config = {"batching": {"max_queue_delay_ms": 0}, "runtime": {"intra_op_threads": 1}}
    return {
        "mixed": add_model(repo, "mixed", _mixed_graph(), config=config),  # type: ignore[arg-type]
        "scale": add_model(repo, "scale", _scale_graph(), config=config),  # type: ignore[arg-type]
    }


class Reference:
    """ONNX Runtime sessions on the served model files: what a correct answer is."""

    def __init__(self, files: dict[str, Path]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._sessions = {
            name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in files.items()
        }

    def run(self, model: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._sessions[model]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, arrays), strict=True))


def rules_for(ports: tuple[Port, ...], max_rows: int = 32) -> InputRules:
    """A fuzz model's input rules, as the data plane hands them to a decoder."""

    def spec(name: str, datatype: str, dims: tuple[int, ...]) -> TensorSpec:
        return TensorSpec(name, BY_NAME[datatype], (None, *dims), (None,) * (len(dims) + 1))

    signature = Signature(
        tuple(spec(p.name, p.datatype, p.dims) for p in ports),
        tuple(spec(p.output, p.datatype, p.dims) for p in ports),
    )
    return InputRules(signature, True, max_rows, {})
