"""Train and export the ONNX models that ship inside the ``service`` package.

Why this exists: the server needs a few real models that it can load with no
network access (tests, the README walkthrough, demos and benchmarks). Both are
trained here on scikit-learn's bundled ``load_digits`` data (8x8 handwritten
digits, 64 pixel intensities 0..16), so nothing is downloaded and anyone can
regenerate the committed files. Seeds are fixed and training is pinned to one
BLAS thread, so with the same library versions on the same kind of CPU a rerun
writes byte-identical files.

Models written under ``--out`` (default: ``service/inscale/bundled_models``)::

    digits/1/model.onnx        StandardScaler + LogisticRegression, small and fast
    digits-wide/1/model.onnx   StandardScaler + MLP 64-2048-2048-10, ~17 MB,
                               compute-heavy on purpose (for batching/benchmarks)
    ACCURACY.json              held-out accuracy of each exported model
    sample_input.json          4 held-out rows with their true labels (rows
                               that every bundled model classifies correctly)
    <model>/samples.npz        all held-out rows (`input`) and their labels
                               (`labels`): what `inscale optimize` calibrates
                               and scores variants on by default
    <model>/drift_reference.json
                               the training split run through the model, binned
                               (`inscale reference`'s format): what the server
                               compares served rows with to report drift

Both graphs take ``input`` (float32, [N, 64], raw pixel values; scaling is part
of the graph) and return ``label`` (int64, [N]) and ``probabilities``
(float32, [N, 10]); ZipMap is disabled so the outputs are plain tensors.

The script checks each exported graph against the sklearn estimator it came
from (same labels, probabilities within 1e-5) through onnxruntime's CPU
provider, and fails if they disagree.

Dependencies: scikit-learn, skl2onnx and onnx are build-time only (the
project's ``train`` extra, also part of ``dev``), plus onnxruntime and numpy,
which the server needs anyway. Usage::

    python scripts/build_bundled_models.py [--out DIR] [--bench]
    python scripts/build_bundled_models.py --held-out-only | --references-only

The two last modes rewrite only those files and leave the committed
model.onnx files as they are (the references run them on the training
split). A reference's `made_at` is the build time, or SOURCE_DATE_EPOCH when
set (for a byte-identical rerun).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from inscale.drift.command import outputs_of, write_reference
from inscale.signature import signature_of

SEED = 0
TEST_SIZE = 0.25
N_FEATURES = 64
INPUT_NAME = "input"
# ai.onnx 17 (and the ai.onnx.ml version skl2onnx pairs with it) is well
# inside what the onnxruntime versions we support can execute.
TARGET_OPSET = 17
PROBA_ATOL = 1e-5
SAMPLE_ROWS = 4
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "service" / "inscale" / "bundled_models"

Float32Array = NDArray[np.float32]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    x_train: Float32Array
    x_test: Float32Array
    y_train: IntArray
    y_test: IntArray


@dataclass(frozen=True)
class ModelSpec:
    name: str
    estimator: str  # short human description, also stored in ACCURACY.json
    build: Callable[[], Pipeline]


@dataclass(frozen=True)
class Result:
    name: str
    estimator: str
    sklearn_accuracy: float
    onnx_accuracy: float
    max_proba_diff: float
    test_rows: int
    onnx_bytes: bytes
    correct: NDArray[np.bool_]  # per held-out row: did the ONNX model get it right


def build_digits() -> Pipeline:
    # The default C=1.0 scored best of 0.01, 0.03, 0.1, 0.3 and 1.0 in 5-fold
    # CV on the training split; scaling lets lbfgs converge within max_iter.
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))


def build_digits_wide() -> Pipeline:
    # Deliberately oversized for a 64-pixel problem: the point is a model whose
    # inference cost is dominated by two 2048-wide matmuls. 20 epochs keep
    # training to seconds while already reaching ~97% held-out accuracy.
    return make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=(2048, 2048),
            activation="relu",
            max_iter=20,
            random_state=SEED,
        ),
    )


SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("digits", "StandardScaler + LogisticRegression(C=1.0)", build_digits),
    ModelSpec(
        "digits-wide",
        "StandardScaler + MLPClassifier(hidden_layer_sizes=(2048, 2048), relu, 20 epochs)",
        build_digits_wide,
    ),
)


def load_split() -> Split:
    x, y = load_digits(return_X_y=True)
    # The server receives float32 tensors, so train and evaluate on exactly that.
    x = x.astype(np.float32)
    y = y.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y
    )
    return Split(x_train, x_test, y_train, y_test)


def train(spec: ModelSpec, split: Split) -> Pipeline:
    model = spec.build()
    # One BLAS thread makes the floating-point reduction order, and so the
    # trained weights, independent of how many cores the machine has.
    with threadpool_limits(limits=1), warnings.catch_warnings():
        # The MLP's epoch cap is intentional; its ConvergenceWarning is noise.
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        model.fit(split.x_train, split.y_train)
    return model


def doc_string(spec: ModelSpec) -> str:
    return (
        f"inscale bundled model '{spec.name}': handwritten digit classifier (0-9). "
        f"Input '{INPUT_NAME}': float32 [N, 64], an 8x8 image flattened row-major, "
        "pixel values 0..16 unscaled. Outputs 'label' int64 [N] and "
        "'probabilities' float32 [N, 10]. "
        f"Estimator: {spec.estimator}. Trained on scikit-learn's load_digits "
        f"(stratified train_test_split test_size={TEST_SIZE}, random_state={SEED}), "
        "exported with skl2onnx (no ZipMap) by scripts/build_bundled_models.py; "
        "held-out accuracy is in ACCURACY.json."
    )


def dedupe_opsets(model: onnx.ModelProto) -> None:
    # skl2onnx can list the default domain twice; keep one entry per domain
    # (the highest version) so the model header is unambiguous.
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        versions[opset.domain] = max(versions.get(opset.domain, 0), opset.version)
    del model.opset_import[:]
    for domain, version in sorted(versions.items()):
        model.opset_import.append(onnx.helper.make_opsetid(domain, version))


def export(spec: ModelSpec, model: Pipeline) -> bytes:
    onx = convert_sklearn(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        options={id(model): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    dedupe_opsets(onx)
    onx.doc_string = onx.graph.doc_string = doc_string(spec)
    onx.graph.name = spec.name.replace("-", "_")
    onnx.checker.check_model(onx, full_check=True)
    return bytes(onx.SerializeToString())


def cpu_session(onnx_bytes: bytes, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    # Explicit provider: the check must not silently depend on what else is installed.
    return ort.InferenceSession(
        onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
    )


def run_onnx(onnx_bytes: bytes, x: Float32Array) -> tuple[IntArray, Float32Array]:
    labels, probabilities = cpu_session(onnx_bytes).run(["label", "probabilities"], {INPUT_NAME: x})
    return labels, probabilities


def evaluate(spec: ModelSpec, split: Split) -> Result:
    model = train(spec, split)
    onnx_bytes = export(spec, model)

    sk_labels = model.predict(split.x_test)
    sk_proba = model.predict_proba(split.x_test)
    onnx_labels, onnx_proba = run_onnx(onnx_bytes, split.x_test)

    max_diff = float(np.max(np.abs(onnx_proba - sk_proba)))
    if max_diff > PROBA_ATOL or not np.array_equal(onnx_labels, sk_labels):
        raise SystemExit(
            f"{spec.name}: ONNX disagrees with sklearn "
            f"(max |dp| = {max_diff:.2e}, "
            f"label mismatches = {int(np.sum(onnx_labels != sk_labels))})"
        )
    return Result(
        name=spec.name,
        estimator=spec.estimator,
        sklearn_accuracy=float(np.mean(sk_labels == split.y_test)),
        onnx_accuracy=float(np.mean(onnx_labels == split.y_test)),
        max_proba_diff=max_diff,
        test_rows=len(split.y_test),
        onnx_bytes=onnx_bytes,
        correct=onnx_labels == split.y_test,
    )


def write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def write_outputs(out: Path, results: list[Result], split: Split) -> None:
    for result in results:
        model_path = out / result.name / "1" / "model.onnx"
        model_path.parent.mkdir(parents=True, exist_ok=True)
        model_path.write_bytes(result.onnx_bytes)

    write_json(
        out / "ACCURACY.json",
        {
            r.name: {
                "accuracy": round(r.onnx_accuracy, 6),
                "sklearn_accuracy": round(r.sklearn_accuracy, 6),
                "test_rows": r.test_rows,
                "estimator": r.estimator,
            }
            for r in results
        },
    )
    write_sample(out / "sample_input.json", split, results)
    write_held_out(out, split)
    write_references(out, split, {r.name: r.onnx_bytes for r in results})


def write_held_out(out: Path, split: Split) -> None:
    for spec in SPECS:
        np.savez_compressed(
            out / spec.name / "samples.npz", **{INPUT_NAME: split.x_test, "labels": split.y_test}
        )


def write_references(out: Path, split: Split, models: dict[str, bytes]) -> None:
    """Each model's drift reference from the rows it was trained on: what "not drifted"
    means for it. Held-out rows are kept for checking that they score as not drifted."""
    rows = len(split.x_train)
    source = (
        f"training split of scikit-learn load_digits ({rows} rows), scripts/build_bundled_models.py"
    )
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch) if epoch else time.time(), UTC)
    for name, onnx_bytes in models.items():
        session = cpu_session(onnx_bytes)
        signature = signature_of(session)
        inputs = {INPUT_NAME: split.x_train}
        write_reference(
            out / name / "drift_reference.json",
            signature,
            inputs,
            outputs_of(session, signature, inputs),
            source,
            made_at=when.isoformat(timespec="seconds"),
        )


def committed_models(out: Path) -> dict[str, bytes]:
    return {spec.name: (out / spec.name / "1" / "model.onnx").read_bytes() for spec in SPECS}


def write_sample(path: Path, split: Split, results: list[Result]) -> None:
    # Held-out rows, so they are real inputs no model trained on; restricted
    # to rows every model labels correctly so docs and tests can show (and
    # assert) a right answer from any bundled model. One image per line keeps
    # the file short enough to read and to diff.
    all_correct = np.logical_and.reduce([r.correct for r in results])
    picked = np.flatnonzero(all_correct)[:SAMPLE_ROWS]
    rows = ",\n    ".join(json.dumps(row) for row in split.x_test[picked].tolist())
    labels = json.dumps(split.y_test[picked].tolist())
    path.write_text(
        f'{{\n  "inputs": [\n    {rows}\n  ],\n  "labels": {labels}\n}}\n',
        encoding="utf-8",
    )


def bench(onnx_bytes: bytes, x: Float32Array, batch: int, runs: int = 200) -> float:
    """Median single-threaded latency in milliseconds for one batch."""
    session = cpu_session(onnx_bytes, threads=1)
    feed = {INPUT_NAME: x[:batch]}
    for _ in range(10):  # warm-up: first runs pay allocation and caching costs
        session.run(None, feed)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings) * 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output directory (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--held-out-only",
        action="store_true",
        help="only write each model folder's samples.npz (no training)",
    )
    parser.add_argument(
        "--references-only",
        action="store_true",
        help="only write each model folder's drift_reference.json, from its committed "
        "model.onnx (no training)",
    )
    parser.add_argument(
        "--bench",
        action="store_true",
        help="also time each exported model with onnxruntime (1 thread, CPU)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    split = load_split()
    if args.held_out_only:
        write_held_out(args.out, split)
        print(f"wrote the held-out rows into {args.out}")
        return 0
    if args.references_only:
        write_references(args.out, split, committed_models(args.out))
        print(f"wrote the drift references into {args.out}")
        return 0

    results = []
    for spec in SPECS:
        result = evaluate(spec, split)
        results.append(result)
        print(
            f"{spec.name}: sklearn accuracy {result.sklearn_accuracy:.4f}, "
            f"onnx accuracy {result.onnx_accuracy:.4f} on {result.test_rows} rows, "
            f"max |dp| {result.max_proba_diff:.1e}, "
            f"{len(result.onnx_bytes) / 1e6:.2f} MB"
        )

    write_outputs(args.out, results, split)
    print(f"wrote {args.out}")

    if args.bench:
        for result in results:
            for batch in (1, 32):
                ms = bench(result.onnx_bytes, split.x_test, batch)
                print(f"{result.name}: batch {batch:>2}: median {ms:.3f} ms (1 thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
