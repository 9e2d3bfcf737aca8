"""The models bench_batching.py serves, and their raw ONNX Runtime timing (the compute floor).

bench_batching.py imports `build_repository` and runs this file as its own process under
`taskset`, so ONNX Runtime sizes its thread pool for the same single core the server gets.
As a script it prints one JSON line:
  {"onnxruntime": "1.x", "batches": [{"batch_size": 32, "median_ms": .., "us_per_row": ..}, ..]}

    python loadtests/bench_models.py MODEL.onnx --sample sample_input.json --batch-sizes 1,8,32
"""

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, save

WIDE_ONNX = Path(__file__).resolve().parents[1] / "service/bundled_models/digits-wide/1/model.onnx"


def identity_model() -> Any:
    """Same input as digits-wide and no compute: what HTTP, JSON and the batcher cost alone."""
    spec: list[str | int | None] = ["N", 64]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, spec)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, spec)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    return model


def build_repository(root: Path, models: list[str]) -> None:
    """wide: defaults (batching on); wide-nobatch: the same file with batching off; identity."""
    for name in models:
        version_dir = root / name / "1"
        version_dir.mkdir(parents=True)
        if name == "identity":
            save(identity_model(), version_dir / "model.onnx")
            continue
        (version_dir / "model.onnx").symlink_to(WIDE_ONNX)  # 17 MB; no need to copy
        if name == "wide-nobatch":
            (root / name / "config.yaml").write_text("batching:\n  enabled: false\n")


def server_default_session(model: Path) -> ort.InferenceSession:
    """The session the server opens for a model with no config (see service/runtime.py)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 0  # 0: ONNX Runtime's own default, as the server's config
    options.inter_op_num_threads = 0
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def real_rows(sample: Path, batch_size: int) -> np.ndarray:
    """A batch of real rows (the sample's rows repeated), so timings see real data, not zeros."""
    rows = np.asarray(json.loads(sample.read_text())["inputs"], dtype=np.float32)
    return np.resize(rows, (batch_size, rows.shape[1]))


def median_run_seconds(session: ort.InferenceSession, batch: np.ndarray, budget_s: float) -> float:
    """Median of as many runs as fit in the budget (at least 20), after a short warm-up."""
    feeds = {session.get_inputs()[0].name: batch}
    for _ in range(10):
        session.run(None, feeds)
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 20 or time.perf_counter() < deadline:
        start = time.perf_counter()
        session.run(None, feeds)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(model: Path, sample: Path, sizes: list[int], budget_s: float) -> dict[str, object]:
    session = server_default_session(model)
    batches = []
    for size in sizes:
        seconds = median_run_seconds(session, real_rows(sample, size), budget_s)
        batches.append(
            {"batch_size": size, "median_ms": seconds * 1e3, "us_per_row": seconds * 1e6 / size}
        )
    return {"onnxruntime": ort.__version__, "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description="Raw ONNX Runtime time per batch size.")
    parser.add_argument("model", type=Path)
    parser.add_argument("--sample", type=Path, required=True, help="JSON with an 'inputs' list")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per batch size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print(json.dumps(measure(args.model, args.sample, sizes, args.budget)))


if __name__ == "__main__":
    main()
