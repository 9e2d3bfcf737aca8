"""Drift references end to end: `inscale reference` writes one the server's loader accepts (and
refuses clearly, writing nothing); the bundled models' own references fit them; served rows
score as by hand with numpy, held-out rows low and shifted rows high; and a reference that is
missing, broken or does not fit turns drift off with a reason naming the file while the model
keeps serving."""

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inscale.drift.reference import REFERENCE_FILE, load
from inscale.signature import Signature, signature_of
from support.server import ServerProcess, running_server

BUNDLED = Path(__file__).resolve().parents[1] / "service" / "inscale" / "bundled_models"
DRIFT_CONFIG = "drift:\n  sample: 1.0\n  window_s: 60\n"
FLOOR = 1e-4  # inscale.drift.scores.SHARE_FLOOR, restated: the hand computation is independent
SHIFT = 0.25  # PSI over this is a shift by the industry's convention


def held_out() -> np.ndarray:
    with np.load(BUNDLED / "digits" / "samples.npz") as data:
        return np.asarray(data["input"], dtype=np.float32)


def signature_of_model(model_dir: Path) -> Signature:
    session = ort.InferenceSession(
        str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return signature_of(session)


def reference_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inscale", "reference", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_digits(into: Path, name: str = "digits", config: str | None = None) -> Path:
    target = into / name
    shutil.copytree(BUNDLED / "digits", target)
    if config is not None:
        (target / "config.yaml").write_text(config)
    return target


# -- inscale reference ------------------------------------------------------------------------


def test_reference_writes_a_file_the_server_loader_accepts(tmp_path: Path) -> None:
    model = copy_digits(tmp_path)
    (model / REFERENCE_FILE).unlink()
    done = reference_cli(model, "--data", model / "samples.npz")
    assert done.returncode == 0, done.stderr
    assert "input features: 64" in done.stdout
    assert (
        "label (classes: 10)" in done.stdout and "probabilities (bins: 10 columns)" in done.stdout
    )

    loaded = load(model / REFERENCE_FILE, signature_of_model(model))
    assert [f.name for f in loaded.inputs] == [f"input[{i}]" for i in range(64)]
    label = [f for f in loaded.outputs if f.tensor == "label"]
    assert len(label) == 1 and label[0].classes
    assert label[0].edges.tolist() == list(range(10))
    assert len([f for f in loaded.outputs if f.tensor == "probabilities"]) == 10
    assert loaded.rows == 450 and "samples.npz (450 rows)" in loaded.source
    # A column's edges are its quantiles, here a mid-image pixel with many distinct values.
    column = held_out()[:, 20].astype(np.float64)
    wanted = np.unique(np.quantile(column, np.linspace(0, 1, 11)[1:-1]))
    assert loaded.inputs[20].edges.tolist() == pytest.approx(wanted.tolist())
    assert not [p for p in model.iterdir() if p.name.endswith(".tmp")]


def test_reference_out_writes_there_and_leaves_the_folder_alone(tmp_path: Path) -> None:
    model = copy_digits(tmp_path)
    before = (model / REFERENCE_FILE).read_bytes()
    out = tmp_path / "elsewhere.json"
    done = reference_cli(model, "--data", model / "samples.npz", "--bins", "5", "--out", out)
    assert done.returncode == 0, done.stderr
    assert (model / REFERENCE_FILE).read_bytes() == before
    document = json.loads(out.read_text())
    assert max(len(f["shares"]) for f in document["inputs"][0]["features"]) <= 6


def test_reference_says_when_the_version_has_its_own_which_the_server_reads_instead(
    tmp_path: Path,
) -> None:
    model = copy_digits(tmp_path)
    own = model / "1" / REFERENCE_FILE
    shutil.copy(model / REFERENCE_FILE, own)
    done = reference_cli(model, "--data", model / "samples.npz")
    assert done.returncode == 0, done.stderr
    assert f"note: {own} is that version's own reference and is read instead" in done.stdout
    assert f"wrote {model / REFERENCE_FILE}" in done.stdout


def _rows_file(tmp_path: Path, rows: np.ndarray) -> Path:
    path = tmp_path / "rows.npz"
    np.savez(path, input=rows)
    return path


REFUSALS: dict[str, tuple[Callable[[Path, Path], list[str | Path]], str]] = {
    "missing model folder": (
        lambda model, tmp: [tmp / "nope", "--data", model / "samples.npz"],
        "does not exist",
    ),
    "missing data file": (lambda model, tmp: [model, "--data", tmp / "none.npz"], "does not exist"),
    "63 columns": (
        lambda model, tmp: [model, "--data", _rows_file(tmp, held_out()[:, :63])],
        "has shape [450, 63], the model takes [-1, 64]",
    ),
    "too few rows": (
        lambda model, tmp: [model, "--data", _rows_file(tmp, held_out()[:50])],
        "has 50 rows; a reference needs at least 100",
    ),
    "not a sample format": (
        lambda model, tmp: [model, "--data", model / "1" / "model.onnx"],
        "use .npz, .npy or .json",
    ),
    "one bin": (
        lambda model, tmp: [model, "--data", model / "samples.npz", "--bins", "1"],
        "--bins",
    ),
    "no such version": (
        lambda model, tmp: [model, "--data", model / "samples.npz", "--version", "7"],
        "has no version 7",
    ),
    "--out into a missing folder": (
        lambda model, tmp: [
            model,
            "--data",
            model / "samples.npz",
            "--out",
            tmp / "nope" / "r.json",
        ],
        "folder '",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_reference_refusals_exit_2_name_the_problem_and_write_nothing(
    tmp_path: Path, case: str
) -> None:
    model = copy_digits(tmp_path)
    before = (model / REFERENCE_FILE).read_bytes()
    arguments, message = REFUSALS[case]
    done = reference_cli(*arguments(model, tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("inscale reference: ") and message in done.stderr
    assert "Traceback" not in done.stderr
    assert (model / REFERENCE_FILE).read_bytes() == before
    assert sorted(p.name for p in model.iterdir()) == sorted(
        p.name for p in (BUNDLED / "digits").iterdir()
    )
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("name", ["digits", "digits-wide"])
def test_bundled_references_are_their_training_split_and_fit_the_model(name: str) -> None:
    path = BUNDLED / name / REFERENCE_FILE
    assert path.stat().st_size < 64_000  # in the package: it should stay small
    loaded = load(path, signature_of_model(BUNDLED / name))
    assert loaded.source == (
        "training split of scikit-learn load_digits (1347 rows), scripts/build_bundled_models.py"
    )
    assert loaded.rows == 1347 and len(loaded.inputs) == 64 and loaded.skipped == []
    label = next(f for f in loaded.outputs if f.tensor == "label")
    assert label.classes and label.edges.tolist() == list(range(10))
    # A stratified split: every class is close to a tenth of the predictions on it.
    assert np.all(np.abs(label.expected[:10] - 0.1) < 0.02) and label.expected[10] == 0


# -- served rows against the reference ----------------------------------------------------------


def drift_of(server: ServerProcess, model: str) -> dict[str, Any]:
    body = httpx.get(f"{server.url}/models/{model}", timeout=10).json()
    drift: dict[str, Any] = body["versions"][0]["drift"]
    return drift


def send(server: ServerProcess, model: str, rows: np.ndarray) -> None:
    for start in range(0, len(rows), 50):
        body = {"model": model, "inputs": rows[start : start + 50].tolist()}
        assert httpx.post(f"{server.url}/predict", json=body, timeout=30).status_code == 200


def wait_for_rows(server: ServerProcess, model: str, rows: int, timeout_s: float = 10) -> None:
    """The background update bins sampled rows once a second: poll until all are counted."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if drift_of(server, model)["rows"] == rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"{model}: the window never held {rows} rows: {drift_of(server, model)}")


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "digits": lambda x: x,  # the held-out rows as they are
    "scaled": lambda x: x * np.float32(0.5),
    "permuted": lambda x: x[:, np.random.default_rng(0).permutation(64)],
}


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with a digits copy per kind of rows, each sampling every row it serves."""
    repo = tmp_path_factory.mktemp("drift-scored")
    for name in SHIFTS:
        copy_digits(repo, name, DRIFT_CONFIG)
    with running_server(repo) as server:
        for name, shift in SHIFTS.items():
            send(server, name, shift(held_out()))
        for name in SHIFTS:
            wait_for_rows(server, name, 450)
        yield server


def test_held_out_rows_score_low_and_shifted_rows_high(scored: ServerProcess) -> None:
    worst = {name: drift_of(scored, name)["input_worst"]["psi"] for name in SHIFTS}
    # Measured: held-out 0.047 (input[47]); scaled 7.8, permuted 15.2.
    assert worst["digits"] < 0.1, worst
    assert worst["scaled"] > SHIFT and worst["permuted"] > SHIFT, worst
    assert drift_of(scored, "digits")["input_mean_psi"] < 0.05


def by_hand(reference: dict[str, Any], rows: np.ndarray) -> list[tuple[str, float, float]]:
    """(feature, PSI, KS) of each input feature, computed from the reference file alone."""
    found = []
    for feature in reference["inputs"][0]["features"]:
        edges = np.asarray(feature["edges"])
        expected = np.asarray(feature["shares"])
        index = np.searchsorted(edges, rows[:, feature["index"]].astype(np.float64), "right")
        actual = np.bincount(index, minlength=edges.size + 1) / len(rows)
        a, e = np.maximum(actual, FLOOR), np.maximum(expected, FLOOR)
        psi = float(np.sum((a - e) * np.log(a / e)))
        ks = float(np.max(np.abs(np.cumsum(actual) - np.cumsum(expected))))
        found.append((feature["name"], psi, ks))
    return found


def metric(server: ServerProcess, name: str, model: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("model") == model:
                return float(sample.value)
    raise AssertionError(f"no {name} for {model} on /metrics")


@pytest.mark.parametrize("name", list(SHIFTS))
def test_served_scores_equal_numpy_by_hand(scored: ServerProcess, name: str) -> None:
    reference = json.loads((BUNDLED / "digits" / REFERENCE_FILE).read_text())
    rows = SHIFTS[name](held_out())
    hand = by_hand(reference, rows)
    worst = max(hand, key=lambda f: f[1])
    drift = drift_of(scored, name)
    assert drift["input_worst"]["feature"] == worst[0]
    assert drift["input_worst"]["psi"] == pytest.approx(worst[1], abs=1e-6)
    assert drift["input_worst"]["ks"] == pytest.approx(worst[2], abs=1e-6)
    assert drift["input_mean_psi"] == pytest.approx(np.mean([f[1] for f in hand]), abs=1e-6)
    assert metric(scored, "inscale_drift_input_score", name) == pytest.approx(worst[1], abs=1e-6)

    # The predicted classes: the model's own labels on the rows, against the reference shares.
    session = ort.InferenceSession(
        str(BUNDLED / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    labels = session.run(["label"], {"input": rows})[0]
    label = next(o for o in reference["outputs"] if o["name"] == "label")
    actual = np.bincount(labels, minlength=10)[:10] / len(rows)
    expected = np.asarray(label["shares"])
    a, e = np.maximum(np.append(actual, 0.0), FLOOR), np.maximum(np.append(expected, 0.0), FLOOR)
    psi = float(np.sum((a - e) * np.log(a / e)))
    served = next(o for o in drift["outputs"] if o["output"] == "label")
    assert served["psi"] == pytest.approx(psi, abs=1e-6)
    shares = drift["prediction_shares"]["label"]
    assert [shares[str(c)] for c in range(10)] == pytest.approx(actual.tolist(), abs=1e-12)


# -- references that are missing, broken or do not fit ----------------------------------------


def edit_reference(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(model: Path) -> None:
        path = model / REFERENCE_FILE
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document))

    return apply


def _rename_input(document: dict[str, Any]) -> None:
    document["inputs"][0]["name"] = "pixels"


def _drop_feature(document: dict[str, Any]) -> None:
    document["inputs"][0]["features"].pop()


def _reverse_edges(document: dict[str, Any]) -> None:
    feature = document["inputs"][0]["features"][20]
    feature["edges"] = feature["edges"][::-1]


# model name -> (how its folder differs from digits, its config, words the reason contains)
BROKEN: dict[str, tuple[Callable[[Path], object], str, str]] = {
    "missing": (lambda m: (m / REFERENCE_FILE).unlink(), DRIFT_CONFIG, "no drift_reference.json"),
    "corrupt": (
        lambda m: (m / REFERENCE_FILE).write_text('{"schema": 1, "inputs": ['),
        DRIFT_CONFIG,
        "cannot be read",
    ),
    "dropped": (
        edit_reference(_drop_feature),
        DRIFT_CONFIG,
        "has 63 features for input, whose rows have 64 values",
    ),
    "renamed": (
        edit_reference(_rename_input),
        DRIFT_CONFIG,
        "describes input 'pixels', which the model does not have",
    ),
    "unordered": (
        edit_reference(_reverse_edges),
        DRIFT_CONFIG,
        "'input[20]''s edges are not strictly increasing",
    ),
    "disabled": (lambda m: None, "drift:\n  enabled: false\n", "drift.enabled is false"),
    "unknown-feature": (
        lambda m: None,
        DRIFT_CONFIG + '  features: ["input[64]"]\n',
        "drift.features names input[64], not in the reference",
    ),
}
NAMES_THE_FILE = {"corrupt", "dropped", "renamed", "unordered"}


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """One server over a digits copy per broken case, plus one monitoring input[3] only."""
    repo = tmp_path_factory.mktemp("drift-broken")
    for name, (change, config, _) in BROKEN.items():
        change(copy_digits(repo, name, config))
    copy_digits(repo, "one-feature", DRIFT_CONFIG + '  features: ["input[3]"]\n')
    with running_server(repo) as server:
        yield server, repo


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_bad_reference_turns_drift_off_with_a_reason_and_the_model_serves(
    broken: tuple[ServerProcess, Path], name: str
) -> None:
    server, repo = broken
    body = {"model": name, "inputs": held_out()[:3].tolist()}
    answer = httpx.post(f"{server.url}/predict", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    drift = drift_of(server, name)
    assert drift["enabled"] is False and set(drift) == {"enabled", "reason"}
    assert BROKEN[name][2] in drift["reason"], drift
    path = str(repo / name / REFERENCE_FILE)
    warnings = [
        r
        for r in server.log_records()
        if r.get("level") == "warning" and f"model {name} version 1" in str(r.get("msg"))
    ]
    if name in NAMES_THE_FILE:
        assert path in drift["reason"]
        assert len(warnings) == 1 and path in str(warnings[0]["msg"]), warnings
        assert drift["reason"] in str(warnings[0]["msg"])
    elif name == "unknown-feature":
        assert len(warnings) == 1 and "input[64]" in str(warnings[0]["msg"])
    else:  # no reference, or drift turned off on purpose: nothing to warn about
        assert warnings == []


def test_drift_features_limits_what_is_monitored(broken: tuple[ServerProcess, Path]) -> None:
    server, _ = broken
    drift = drift_of(server, "one-feature")
    assert drift["enabled"] is True and drift["features"] == 1
    assert drift["reference"]["input_features"] == 64  # the file has them all
    send(server, "one-feature", held_out()[:100])
    wait_for_rows(server, "one-feature", 100)
    drift = drift_of(server, "one-feature")
    assert [s["feature"] for s in drift["top_inputs"]] == ["input[3]"]
    assert drift["input_worst"]["feature"] == "input[3]"
    assert {o["output"] for o in drift["outputs"]} == {"label", "probabilities"}
