"""The models bench_batching.py serves, and their raw ONNX Runtime timing (the compute floor).

bench_batching imports `build_repository` and runs this module as its own process under
`taskset`, so ONNX Runtime sizes its thread pool for the same single core the server gets.
As a script it prints one JSON line:
  {"onnxruntime": "1.x", "batches": [{"batch_size": 32, "median_ms": .., "us_per_row": ..}, ..]}

    .venv/bin/python -m loadtests.bench_models MODEL.onnx --sample SAMPLE.json --batch-sizes 1,8
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

from inscale.models.config import RuntimeConfig
from inscale.models.session import session_options

SAMPLE = Path(__file__).resolve().parents[1] / "service/inscale/bundled_models/sample_input.json"
WIDE_ONNX = (
    Path(__file__).resolve().parents[1] / "service/inscale/bundled_models/digits-wide/1/model.onnx"
)


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


def build_repository(root: Path, models: list[str], intra_op_threads: int = 0) -> None:
    """wide: defaults (batching on); wide-nobatch: the same file with batching off; identity.

    intra_op_threads 0 keeps the server's default; only then is no config file written for wide.
    """
    for name in models:
        version_dir = root / name / "1"
        version_dir.mkdir(parents=True)
        if name == "identity":
            save(identity_model(), version_dir / "model.onnx")
        else:
            (version_dir / "model.onnx").symlink_to(WIDE_ONNX)  # 17 MB; no need to copy
        config = "batching:\n  enabled: false\n" if name == "wide-nobatch" else ""
        if intra_op_threads:
            config += f"runtime:\n  intra_op_threads: {intra_op_threads}\n"
        if config:
            (root / name / "config.yaml").write_text(config)


def one_row_bodies(folder: Path, models: list[str]) -> dict[str, Path]:
    """A `/predict` body per model, each the bundled sample's first row (real data, one row)."""
    row = json.loads(SAMPLE.read_text())["inputs"][0]
    bodies = {}
    for model in models:
        bodies[model] = folder / f"{model}.json"
        bodies[model].write_text(json.dumps({"model": model, "inputs": [row]}))
    return bodies


def server_session(model: Path, intra_op_threads: int) -> ort.InferenceSession:
    """The session the server opens for a model with the default runtime config: the same
    `session_options` function, so the two can never drift apart."""
    options = session_options(RuntimeConfig(intra_op_threads=intra_op_threads))
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def real_rows(sample: Path, batch_size: int) -> np.ndarray:
    """A batch of real rows (the sample's rows repeated), so timings see real data, not zeros."""
    rows = np.asarray(json.loads(sample.read_text())["inputs"], dtype=np.float32)
    return np.resize(rows, (batch_size, rows.shape[1]))


def timed_runs(
    session: ort.InferenceSession, batch: np.ndarray, budget_s: float
) -> tuple[float, float]:
    """Median seconds per run over as many runs as fit in the budget (at least 20), after a
    short warm-up; and the cores kept busy meanwhile (CPU time / wall time), which shows
    whether ONNX Runtime stayed on the core it was pinned to."""
    feeds = {session.get_inputs()[0].name: batch}
    for _ in range(10):
        session.run(None, feeds)
    samples: list[float] = []
    wall, cpu = time.perf_counter(), time.process_time()
    deadline = wall + budget_s
    while len(samples) < 20 or time.perf_counter() < deadline:
        start = time.perf_counter()
        session.run(None, feeds)
        samples.append(time.perf_counter() - start)
    cores = (time.process_time() - cpu) / (time.perf_counter() - wall)
    return statistics.median(samples), cores


def measure(args: argparse.Namespace) -> dict[str, object]:
    session = server_session(args.model, args.intra_op_threads)
    batches = []
    for size in (int(s) for s in args.batch_sizes.split(",")):
        seconds, cores = timed_runs(session, real_rows(args.sample, size), args.budget)
        ms, us_per_row = seconds * 1e3, seconds * 1e6 / size
        batches.append(
            {"batch_size": size, "median_ms": ms, "us_per_row": us_per_row, "cores": cores}
        )
    return {"onnxruntime": ort.__version__, "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser(description="Raw ONNX Runtime time per batch size.")
    parser.add_argument("model", type=Path)
    parser.add_argument("--sample", type=Path, required=True, help="JSON with an 'inputs' list")
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per batch size")
    parser.add_argument("--intra-op-threads", type=int, default=0, help="0: ORT's default")
    print(json.dumps(measure(parser.parse_args())))


if __name__ == "__main__":
    main()
