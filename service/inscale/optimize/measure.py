"""One model file measured in a process of its own: load time, resident memory, latency per
batch size, and its outputs on the sample rows (for accuracy or agreement), in batches of 32
rows and one row at a time.

A process per file, because memory and load time are only the file's own in a fresh process:
ORT's arenas and the allocator keep what an earlier session took. The session is opened with
the options the server uses for the model (`inscale.models.session.session_options`, from the
model's runtime config), on the CPU provider unless the config asks for another.

    python -m inscale.optimize.measure --model M.onnx --samples S.npz --runtime '{}' \
        --batch-sizes 1,8,32 --outputs OUT.npz   # prints one JSON object
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inscale.models.config import RuntimeConfig
from inscale.models.session import session_options

EVAL_BATCH = 32  # outputs are scored in batches of this many rows, as a server batches them
ALONE = "alone:"  # prefix of the outputs computed one row at a time
MIN_RUNS = 20
MIN_SECONDS = 0.5  # per batch size: enough runs for a stable median on a noisy machine


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(
    model: Path,
    inputs: dict[str, np.ndarray],
    runtime: RuntimeConfig,
    providers: list[str],
    batch_sizes: list[int],
) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    before = resident_bytes()
    started = time.perf_counter()
    session = ort.InferenceSession(
        str(model), sess_options=session_options(runtime), providers=providers
    )
    load_s = time.perf_counter() - started
    names = [o.name for o in session.get_outputs()]
    outputs = _outputs(session, names, inputs, EVAL_BATCH)
    # The same rows one at a time: a variant whose answers change with the rows batched
    # beside them (dynamic quantization takes its activation ranges from the whole batch)
    # shows it here.
    alone = _outputs(session, names, inputs, 1)
    latency_ms = {}
    for size in batch_sizes:
        feed = {k: _rows(v, size) for k, v in inputs.items()}
        for _ in range(3):
            session.run(names, feed)  # warm-up: first runs pay allocation
        times: list[float] = []
        began = time.perf_counter()
        while len(times) < MIN_RUNS or time.perf_counter() - began < MIN_SECONDS:
            tick = time.perf_counter()
            session.run(names, feed)
            times.append(time.perf_counter() - tick)
        latency_ms[str(size)] = statistics.median(times) * 1000
    figures = {
        "load_s": load_s,
        "resident_mb": (resident_bytes() - before) / 2**20,
        "latency_ms": latency_ms,
        "providers": session.get_providers(),
    }
    return figures, outputs | {f"{ALONE}{name}": value for name, value in alone.items()}


def _outputs(
    session: ort.InferenceSession,
    names: list[str],
    inputs: dict[str, np.ndarray],
    batch: int,
) -> dict[str, np.ndarray]:
    rows = len(next(iter(inputs.values())))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, rows, batch):
        feed = {k: v[start : start + batch] for k, v in inputs.items()}
        for name, value in zip(names, session.run(names, feed), strict=True):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def _rows(array: np.ndarray, size: int) -> np.ndarray:
    """`size` rows from the samples, repeated if there are fewer."""
    if len(array) >= size:
        return array[:size]
    return np.concatenate([array] * (size // len(array) + 1))[:size]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True, help=".npz of input arrays")
    parser.add_argument("--runtime", default="{}", help="the model's runtime config, JSON")
    parser.add_argument("--providers", default="CPUExecutionProvider")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--outputs", type=Path, required=True, help="where outputs go (.npz)")
    args = parser.parse_args(argv)
    with np.load(args.samples, allow_pickle=False) as archive:
        inputs = {name: archive[name] for name in archive.files}
    figures, outputs = measure(
        args.model,
        inputs,
        RuntimeConfig.model_validate(json.loads(args.runtime)),
        args.providers.split(","),
        [int(b) for b in args.batch_sizes.split(",")],
    )
    np.savez(args.outputs, **outputs)  # type: ignore[arg-type]
    json.dump(figures, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
