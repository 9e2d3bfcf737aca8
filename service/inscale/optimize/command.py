"""`inscale optimize MODEL_DIR`: smaller, faster variants of a model, measured side by side.

Each variant (`inscale.optimize.variants`) is made from one version's `model.onnx`, then the
original and every variant are measured in a process of their own (`inscale.optimize.measure`)
with the session options the server uses for the model: file size, load time, resident
memory, median latency per batch size, and the outputs on the sample rows. With labels, each
is scored by accuracy; without, by agreement with the original (top-1 for a classifier) and
by the largest and mean absolute difference of every float output. A variant whose accuracy
(or agreement) falls more than `--max-accuracy-drop` below the original's is marked and never
installed.

Output folder: each variant's `.onnx`, `report.md` (the table) and `results.json`. It is
written under a temporary name beside its final place and renamed when complete, so a failed
run leaves nothing half-written. `--install VARIANT` copies a variant into the model folder as
the next version (with `variant.json` saying where it came from); `--server URL` then asks a
running server to load it through the repository API: the new version serves once warm, and
the old one drains.
"""

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inscale.errors import quoted
from inscale.model_folder import (
    ToolError,
    ask_server_to_load,
    cpu_session,
    first_line,
    read_config,
    version_file,
)
from inscale.models.config import ModelConfig
from inscale.models.repository import MODEL_FILENAME
from inscale.optimize.measure import ALONE, EVAL_BATCH
from inscale.optimize.samples import Samples, find_sample_file, load_samples
from inscale.optimize.variants import VARIANTS, make, requirement
from inscale.signature import Signature, sample_inputs, signature_of

ORIGINAL = "original"
SYNTHETIC_ROWS = 256
CUDA = "CUDAExecutionProvider"


class OptimizeError(ToolError):
    """What `inscale optimize` was asked cannot be done; nothing was written."""


@dataclass
class Options:
    model_dir: Path
    out: Path
    version: int | None = None
    samples: Path | None = None
    variants: list[str] | None = None  # None: every variant that can be made here
    max_accuracy_drop: float = 0.01
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    install: str | None = None
    server: str | None = None
    token: str | None = None


@dataclass
class Row:
    variant: str
    file: str
    size_mb: float
    load_s: float
    resident_mb: float
    latency_ms: dict[str, float]
    speedup: dict[str, float]  # original's latency / this one's, per batch size
    score_name: str  # "accuracy" or "agreement"
    score: float | None
    drop: float | None  # the original's score minus this one's
    max_abs_diff: dict[str, float]
    mean_abs_diff: dict[str, float]
    # The largest change of a float output between a row run alone and in a batch of 32.
    batch_dependence: float
    within: bool  # drop within --max-accuracy-drop: may be installed


@dataclass
class Report:
    model: str
    version: int
    samples: str  # where the rows came from
    rows_evaluated: int
    labelled: bool
    max_accuracy_drop: float
    rows: list[Row]
    skipped: dict[str, str]  # variant -> why it was not tried here
    failed: dict[str, str] = field(default_factory=dict)  # variant -> why making it failed
    installed: dict[str, Any] | None = None


def run(options: Options) -> Report:
    model_dir = options.model_dir
    try:
        version, source = version_file(model_dir, options.version)
    except ToolError as exc:
        raise OptimizeError(exc.message) from exc
    config = read_config(model_dir)
    session = cpu_session(source)
    signature = signature_of(session)
    samples = _samples(options, model_dir, signature)
    wanted, skipped = _variants(options.variants, samples)
    if options.install is not None and options.install not in wanted:
        raise OptimizeError(f"--install {options.install}: that variant is not being made")
    staging = _staging(options.out)
    try:
        report = _build(
            options, staging, model_dir, version, source, config, signature, samples, wanted
        )
        report.skipped = skipped
        _write_report(staging, report)
        if options.out.exists():
            options.out.rmdir()  # checked empty by `_staging`
        staging.rename(options.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if options.install is not None:
        report.installed = install(options, report, model_dir)
        _write_report(options.out, report)
    return report


def _samples(options: Options, model_dir: Path, signature: Signature) -> Samples | None:
    path = options.samples or find_sample_file(model_dir)
    return None if path is None else load_samples(path, signature)


def _variants(asked: list[str] | None, samples: Samples | None) -> tuple[list[str], dict[str, str]]:
    if asked is not None:
        for kind in asked:
            problem = requirement(kind, samples)
            if problem is not None:
                raise OptimizeError(problem)
        return list(dict.fromkeys(asked)), {}
    wanted, skipped = [], {}
    for kind in VARIANTS:
        problem = requirement(kind, samples)
        if kind == "fp16" and problem is None and CUDA not in ort.get_available_providers():
            problem = "fp16 pays on a GPU only, and none is present (ask with --variants fp16)"
        if problem is None:
            wanted.append(kind)
        else:
            skipped[kind] = problem
    return wanted, skipped


def _staging(out: Path) -> Path:
    """A new folder beside `out`, renamed to it once complete."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OptimizeError(f"output folder {quoted(str(out))} exists and is not empty")
    parent = out.parent
    if not parent.is_dir():
        raise OptimizeError(f"output folder's parent {quoted(str(parent))} does not exist")
    try:
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
    except OSError as exc:
        raise OptimizeError(f"output folder {quoted(str(out))} cannot be written: {exc}") from exc


def _build(
    options: Options,
    staging: Path,
    model_dir: Path,
    version: int,
    source: Path,
    config: ModelConfig,
    signature: Signature,
    samples: Samples | None,
    wanted: list[str],
) -> Report:
    with tempfile.TemporaryDirectory(prefix="inscale-optimize-") as scratch:
        work = Path(scratch)
        if samples is not None:
            inputs, labels, origin = samples.inputs, samples.labels, str(samples.source)
        else:
            rng = np.random.default_rng(0)
            inputs = sample_inputs(signature, SYNTHETIC_ROWS, rng)
            labels, origin = None, f"{SYNTHETIC_ROWS} random rows (no sample file)"
        feed = work / "inputs.npz"
        np.savez(feed, **inputs)  # type: ignore[arg-type]
        measured = {ORIGINAL: _measure(source, feed, config, options.batch_sizes, work)}
        files, failed = {ORIGINAL: source}, {}
        for kind in wanted:
            # A library refusing this graph (or making one ORT cannot load) costs that variant
            # only: the table still shows the others, and says why this one is missing.
            target = staging / f"{kind}.onnx"
            try:
                make(kind, source, target, samples, work)
                measured[kind] = _measure(target, feed, config, options.batch_sizes, work)
            except Exception as exc:
                failed[kind] = f"could not be made: {first_line(exc)}"
                target.unlink(missing_ok=True)
                continue
            files[kind] = target
        rows = _rows(files, measured, signature, labels, options.max_accuracy_drop)
        for row in rows[1:]:  # where the file will be once the folder has its name
            row.file = str(options.out / f"{row.variant}.onnx")
        return Report(
            model=model_dir.name,
            version=version,
            samples=origin,
            rows_evaluated=len(next(iter(inputs.values()))),
            labelled=labels is not None,
            max_accuracy_drop=options.max_accuracy_drop,
            rows=rows,
            skipped={},
            failed=failed,
        )


def _measure(
    model: Path, feed: Path, config: ModelConfig, batch_sizes: list[int], work: Path
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    outputs = work / f"{model.stem}.outputs.npz"
    providers = [p.name for p in config.provider_specs() or []] or ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    providers = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    command = [
        sys.executable, "-m", "inscale.optimize.measure",
        "--model", str(model), "--samples", str(feed),
        "--runtime", config.runtime.model_dump_json(),
        "--providers", ",".join(providers),
        "--batch-sizes", ",".join(str(b) for b in batch_sizes),
        "--outputs", str(outputs),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise OptimizeError(f"ONNX Runtime cannot run {model.name}: {tail[0]}")
    figures: dict[str, Any] = json.loads(done.stdout)
    with np.load(outputs, allow_pickle=False) as archive:
        return figures, {name: archive[name] for name in archive.files}


def predicted_classes(signature: Signature, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """A classifier's predicted class per row: its first integer output of one value per row,
    else the argmax of its first float output of shape [N, classes]; None if neither."""
    for spec in signature.outputs:
        value = outputs[spec.name]
        if value.ndim == 1 and value.dtype.kind in "iu":
            return value
    for spec in signature.outputs:
        value = outputs[spec.name]
        if value.ndim == 2 and value.dtype.kind == "f" and value.shape[1] > 1:
            classes: np.ndarray = np.argmax(value, axis=1)
            return classes
    return None


def _rows(
    files: dict[str, Path],
    measured: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]],
    signature: Signature,
    labels: np.ndarray | None,
    max_drop: float,
) -> list[Row]:
    base_figures, base_outputs = measured[ORIGINAL]
    base_classes = predicted_classes(signature, base_outputs)
    reference = labels if labels is not None else base_classes
    floats = [s.name for s in signature.outputs if base_outputs[s.name].dtype.kind == "f"]
    base_score: float | None = None  # the original's own: measured first
    rows = []
    for kind, (figures, outputs) in measured.items():
        classes = predicted_classes(signature, outputs)
        score = None
        if reference is not None and classes is not None:
            score = float(np.mean(classes == reference))
        if kind == ORIGINAL:
            base_score = score
        drop = None if score is None or base_score is None else base_score - score
        diffs = {n: np.abs(outputs[n].astype(np.float64) - base_outputs[n]) for n in floats}
        alone = [float(np.abs(outputs[f"{ALONE}{n}"] - outputs[n]).max()) for n in floats]
        latency = figures["latency_ms"]
        rows.append(
            Row(
                variant=kind,
                file=str(files[kind]),
                size_mb=files[kind].stat().st_size / 1e6,
                load_s=figures["load_s"],
                resident_mb=figures["resident_mb"],
                latency_ms=latency,
                speedup={b: base_figures["latency_ms"][b] / t for b, t in latency.items()},
                score_name="accuracy" if labels is not None else "agreement",
                score=score,
                drop=drop,
                max_abs_diff={n: float(d.max()) for n, d in diffs.items()},
                mean_abs_diff={n: float(d.mean()) for n, d in diffs.items()},
                batch_dependence=max(alone, default=0.0),
                # A model with no class output has no score to hold to the limit: the table
                # shows its output differences, and it is never installed.
                within=drop is not None and drop <= max_drop,
            )
        )
    return rows


def table(report: Report) -> str:
    sizes = list(report.rows[0].latency_ms)
    head = ["variant", "file MB", "load s", "memory MB"]
    head += [f"p50 ms, batch {b}" for b in sizes] + [f"speed-up, batch {sizes[-1]}"]
    head += [report.rows[0].score_name, "drop", "max abs diff", "alone vs batched", "install"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report.rows:
        score = "-" if row.score is None else f"{row.score:.4f}"
        drop = "-" if row.drop is None else f"{row.drop:+.4f}"
        diff = max(row.max_abs_diff.values(), default=0.0)
        mark = "" if row.variant == ORIGINAL else ("ok" if row.within else "**over the drop**")
        cells = [row.variant, f"{row.size_mb:.2f}", f"{row.load_s:.3f}", f"{row.resident_mb:.1f}"]
        cells += [f"{row.latency_ms[b]:.3f}" for b in sizes]
        cells += [f"{row.speedup[sizes[-1]]:.2f}x", score, drop, f"{diff:.2e}"]
        cells += [f"{row.batch_dependence:.2e}", mark]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_report(folder: Path, report: Report) -> None:
    (folder / "results.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    what = "accuracy on their labels" if report.labelled else "agreement with the original"
    lines = [
        f"# inscale optimize: {report.model}, version {report.version}",
        "",
        f"Evaluated on {report.rows_evaluated} rows from {report.samples} ({what}), in",
        f"batches of {EVAL_BATCH} rows. A variant more than {report.max_accuracy_drop} below the",
        "original is marked and never installed. Max abs diff: the largest difference of a float",
        "output from the original's. Alone vs batched: the largest change of a float output",
        f"between a row run alone and in a batch of {EVAL_BATCH}; far from zero, the variant's",
        "answers depend on the rows batched with them (dynamic quantization's activation",
        "ranges are the batch's), which a server with dynamic batching will show.",
        "",
        table(report),
        "",
    ]
    for kind, why in {**report.skipped, **report.failed}.items():
        lines.append(f"- not made: {kind}: {why}")
    if report.installed:
        lines.append(
            f"- installed: {report.installed['variant']} as version {report.installed['version']}"
        )
    (folder / "report.md").write_text("\n".join(lines) + "\n")


def install(options: Options, report: Report, model_dir: Path) -> dict[str, Any]:
    """Copy the chosen variant into the model folder as the next version; with `--server`,
    ask the server to load it."""
    asked = options.install or ""
    chosen = next((r for r in report.rows if r.variant == asked), None)
    if chosen is None:
        raise OptimizeError(f"{asked} is not installed: {report.failed.get(asked, 'not made')}")
    if not chosen.within:
        raise OptimizeError(
            f"{chosen.variant} is not installed: its {chosen.score_name} drop "
            f"({'unknown' if chosen.drop is None else f'{chosen.drop:.4f}'}) exceeds "
            f"--max-accuracy-drop {options.max_accuracy_drop}"
        )
    numbers = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()]
    version = max(numbers, default=0) + 1
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=model_dir))
    try:
        shutil.copyfile(chosen.file, staging / MODEL_FILENAME)
        provenance = {
            "variant": chosen.variant,
            "from_version": report.version,
            chosen.score_name: chosen.score,
            "drop": chosen.drop,
            "made_by": "inscale optimize",
        }
        (staging / "variant.json").write_text(json.dumps(provenance, indent=2) + "\n")
        staging.rename(model_dir / str(version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    installed: dict[str, Any] = {"variant": chosen.variant, "version": version, "loaded": False}
    if options.server is not None:
        ask_server_to_load(options.server, model_dir.name, options.token, "installed")
        installed["loaded"] = True
    return installed
