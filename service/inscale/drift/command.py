"""`inscale reference MODEL_DIR --data FILE`: write a model's drift reference profile.

The rows (training or validation data, labels ignored) are run through the model on ONNX
Runtime's CPU provider, so the reference holds what the model's inputs and its own outputs
looked like on them; `inscale.drift.reference.build` bins both. The file is checked by the
same loader the server uses before it replaces anything, and written atomically (a temporary
file in the same folder, then os.replace), so a server reloading the folder never reads half
a file and a refused run leaves the old reference in place.

The CLI calls `add_arguments` on its `reference` subparser and `run` with the parsed
arguments. `scripts/build_bundled_models.py` uses `outputs_of` and `write_reference` for the
bundled models' references.
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inscale.drift import bins, reference
from inscale.errors import InscaleError, quoted
from inscale.model_folder import ToolError, cpu_session, version_file
from inscale.optimize.samples import load_samples
from inscale.signature import Signature, signature_of

MIN_ROWS = 100  # fewer rows make quantile edges and shares too coarse to compare with
MAX_BINS = 100
BATCH_ROWS = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", type=Path, help="a model folder in a repository")
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="training or validation rows: .npz (one array per input), .npy or JSON "
        f"(as /predict takes them); labels are ignored; at least {MIN_ROWS} rows",
    )
    parser.add_argument(
        "--version", type=int, help="the version whose model makes the outputs (default: newest)"
    )
    parser.add_argument(
        "--bins",
        type=int,
        default=bins.DEFAULT_BINS,
        help=f"quantile bins per feature (default: {bins.DEFAULT_BINS})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"where to write it (default: MODEL_DIR/{reference.REFERENCE_FILE}, which the "
        "server reads for every version without its own)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        target, version, document = _make(args)
    except InscaleError as exc:
        print(f"inscale reference: {exc.message}", file=sys.stderr)
        return 2
    print(summary(document))
    own = reference.find(args.model_dir, version)
    if args.out is None and own is not None and own.resolve() != target.resolve():
        print(f"note: {own} is that version's own reference and is read instead of this one")
    print(f"wrote {target}")
    return 0


def _make(args: argparse.Namespace) -> tuple[Path, int, dict[str, Any]]:
    if not 2 <= args.bins <= MAX_BINS:
        raise ToolError(f"--bins must be between 2 and {MAX_BINS}, got {args.bins}")
    version, model_file = version_file(args.model_dir, args.version)
    session = cpu_session(model_file)
    signature = signature_of(session)
    samples = load_samples(args.data, signature)
    if samples.rows < MIN_ROWS:
        raise ToolError(
            f"data file {quoted(str(args.data))} has {samples.rows} rows; a reference needs "
            f"at least {MIN_ROWS}"
        )
    outputs = outputs_of(session, signature, samples.inputs)
    source = f"{args.data.name} ({samples.rows} rows), model version {version}"
    target = args.out if args.out is not None else args.model_dir / reference.REFERENCE_FILE
    document = write_reference(target, signature, samples.inputs, outputs, source, args.bins)
    return target, version, document


def outputs_of(
    session: ort.InferenceSession, signature: Signature, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The model's outputs on every row, in batches (a model with a fixed batch dim: one row
    at a time)."""
    rows = len(next(iter(inputs.values())))
    step = BATCH_ROWS if signature.batchable else 1
    if not signature.batchable and any(s.shape and s.shape[0] != 1 for s in signature.inputs):
        raise ToolError(
            "the model's inputs have a fixed first dimension other than 1: rows cannot be run "
            "through it one batch at a time"
        )
    names = [spec.name for spec in signature.outputs]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, rows, step):
        feed = {name: array[start : start + step] for name, array in inputs.items()}
        try:
            results = session.run(names, feed)
        except Exception as exc:  # ORT's own types: the rows do not fit the model
            raise ToolError(f"the model failed on rows {start}..{start + step - 1}: {exc}") from exc
        for name, result in zip(names, results, strict=True):
            parts[name].append(np.asarray(result))
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def write_reference(
    target: Path,
    signature: Signature,
    inputs: dict[str, np.ndarray],
    outputs: dict[str, np.ndarray],
    source: str,
    bin_count: int = bins.DEFAULT_BINS,
    made_at: str | None = None,
) -> dict[str, Any]:
    """Build the reference, check it loads against `signature`, then replace `target`."""
    when = made_at if made_at is not None else datetime.now(UTC).isoformat(timespec="seconds")
    document = reference.build(signature, inputs, outputs, source, when, bin_count)
    if not target.parent.is_dir():
        raise ToolError(f"folder {quoted(str(target.parent))} does not exist")
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide it from a server user
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=1)
            file.write("\n")
        reference.load(Path(temporary), signature)  # what the server will do with it
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return document


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def summary(document: dict[str, Any]) -> str:
    features = sum(len(entry["features"]) for entry in document["inputs"])
    per_input = ", ".join(f"{e['name']}: {len(e['features'])}" for e in document["inputs"])
    outputs = []
    for entry in document["outputs"]:
        if entry["kind"] == "classes":
            outputs.append(f"{entry['name']} (classes: {len(entry['classes'])})")
        else:
            outputs.append(f"{entry['name']} (bins: {len(entry['features'])} columns)")
    lines = [
        f"reference from {document['source']}",
        f"input features: {features}" + (f" ({per_input})" if per_input else ""),
        f"outputs: {', '.join(outputs) or 'none'}",
        f"skipped: {'; '.join(document['skipped']) or 'none'}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main = argparse.ArgumentParser(prog="inscale reference")
    add_arguments(main)
    sys.exit(run(main.parse_args()))
