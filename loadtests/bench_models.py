"""Raw in-process ONNX Runtime timing: the compute floor that batching over HTTP is judged against.

bench_batching.py runs this as its own process under `taskset`, so ONNX Runtime sizes its thread
pool for the same single core the server gets. Prints one JSON line:
  {"onnxruntime": "1.x", "batches": [{"batch_size": 32, "median_ms": .., "us_per_row": ..}, ..]}

    python loadtests/raw_ort.py MODEL.onnx --batch-sizes 1,8,32,64 --sample sample_input.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--sample", type=Path, required=True, help="JSON with an 'inputs' list")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per batch size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print(json.dumps(measure(args.model, args.sample, sizes, args.budget)))


if __name__ == "__main__":
    main()
