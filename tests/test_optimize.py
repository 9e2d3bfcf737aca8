"""`inscale optimize`: variants made by the real libraries (ONNX Runtime's graph optimizer and
quantizer), scored on the bundled held-out rows, served by a real server, installed as a new
version that a running server loads; and every refusal is a clear message with nothing
written."""

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from support.server import running_server

BUNDLED = Path(__file__).resolve().parents[1] / "service" / "inscale" / "bundled_models"
ACCURACY = json.loads((BUNDLED / "ACCURACY.json").read_text())


def optimize(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inscale", "optimize", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def copy_model(name: str, into: Path, *, samples: bool = True) -> Path:
    target = into / name
    shutil.copytree(BUNDLED / name, target)
    if not samples:
        (target / "samples.npz").unlink()
    return target


def accuracy_of(model: Path, samples: Path) -> float:
    """The variant's accuracy evaluated directly, without inscale, in the batches of 32 rows
    the table is scored in (a dynamically quantized model's answers depend on the batch)."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    with np.load(samples) as data:
        rows, truth = data["input"], data["labels"]
    labels = [session.run(["label"], {"input": rows[i : i + 32]})[0] for i in range(0, 450, 32)]
    return float(np.mean(np.concatenate(labels) == truth))


@pytest.fixture(scope="module")
def wide_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, Path, dict[str, Any]]]:
    work = tmp_path_factory.mktemp("optimize")
    model = copy_model("digits-wide", work)
    out = work / "out"
    done = optimize(model, "--out", out, "--variants", "graph,int8-dynamic", "--batch-sizes", "1,8")
    assert done.returncode == 0, done.stderr
    yield model, out, json.loads((out / "results.json").read_text())


def test_the_table_scores_each_variant_as_a_direct_evaluation_does(
    wide_run: tuple[Path, Path, dict[str, Any]],
) -> None:
    model, out, results = wide_run
    rows = {row["variant"]: row for row in results["rows"]}
    assert list(rows) == ["original", "graph", "int8-dynamic"]
    assert results["labelled"] and results["rows_evaluated"] == 450
    # The original's score is the bundled model's published held-out accuracy.
    assert rows["original"]["score"] == pytest.approx(ACCURACY["digits-wide"]["accuracy"], abs=1e-6)
    samples = model / "samples.npz"
    for name in ("graph", "int8-dynamic"):
        path = out / f"{name}.onnx"
        assert rows[name]["file"] == str(path) and path.is_file()
        assert rows[name]["score"] == pytest.approx(accuracy_of(path, samples), abs=1e-9)
        assert rows[name]["drop"] == pytest.approx(
            rows["original"]["score"] - rows[name]["score"], abs=1e-9
        )
        assert set(rows[name]["latency_ms"]) == {"1", "8"}
    # int8 weights: about a quarter of the float32 file.
    assert rows["int8-dynamic"]["size_mb"] < 0.4 * rows["original"]["size_mb"]
    assert rows["graph"]["max_abs_diff"]["probabilities"] < 1e-4  # the same function
    assert rows["graph"]["batch_dependence"] < 1e-5
    # Dynamic quantization takes activation ranges from the whole batch: a row's answer
    # changes with its neighbours, and the table says so.
    assert rows["int8-dynamic"]["batch_dependence"] > 1e-3
    report = (out / "report.md").read_text()
    assert "| int8-dynamic |" in report and "accuracy on their labels" in report
    assert not list(out.parent.glob(".out.partial-*"))  # the staging folder became `out`


def test_each_variant_loads_in_inscale_and_answers_as_evaluated(
    wide_run: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    model, out, _ = wide_run
    repo = tmp_path / "repo"
    for name in ("graph", "int8-dynamic"):
        (repo / name / "1").mkdir(parents=True)
        shutil.copyfile(out / f"{name}.onnx", repo / name / "1" / "model.onnx")
    with np.load(model / "samples.npz") as data:
        rows, labels = data["input"][:64], data["labels"][:64]
    with running_server(repo) as server:
        for name in ("graph", "int8-dynamic"):
            direct = ort.InferenceSession(
                str(out / f"{name}.onnx"), providers=["CPUExecutionProvider"]
            )
            expected = direct.run(["label"], {"input": rows})[0]
            response = httpx.post(
                f"{server.url}/predict", json={"model": name, "inputs": rows.tolist()}, timeout=30
            )
            assert response.status_code == 200, response.text
            assert response.json()["outputs"]["label"] == expected.tolist()
            assert np.mean(np.array(response.json()["outputs"]["label"]) == labels) > 0.9


def test_install_adds_a_version_the_running_server_loads(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model = copy_model("digits", repo)
    with running_server(repo, "--control-api", "open") as server:
        done = optimize(
            model, "--out", tmp_path / "out", "--variants", "int8-dynamic",
            "--batch-sizes", "1", "--max-accuracy-drop", "0.05",
            "--install", "int8-dynamic", "--server", server.url,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "installed int8-dynamic as version 2 and loaded" in done.stdout
        provenance = json.loads((model / "2" / "variant.json").read_text())
        assert provenance["variant"] == "int8-dynamic" and provenance["from_version"] == 1
        ready = httpx.get(f"{server.url}/v2/models/digits/versions/2/ready", timeout=10)
        assert ready.status_code == 200
        with np.load(model / "samples.npz") as data:
            row = data["input"][:1].tolist()
        answer = httpx.post(f"{server.url}/predict", json={"model": "digits", "inputs": row})
        assert answer.status_code == 200 and answer.json()["version"] == 2


def test_a_variant_over_the_drop_is_never_installed(tmp_path: Path) -> None:
    model = copy_model("digits", tmp_path)
    done = optimize(
        model, "--out", tmp_path / "out", "--variants", "int8-dynamic", "--batch-sizes", "1",
        "--max-accuracy-drop", "-1", "--install", "int8-dynamic",
    )  # fmt: skip
    assert done.returncode == 2
    assert "is not installed" in done.stderr and "--max-accuracy-drop -1" in done.stderr
    assert not (model / "2").exists()
    assert "**over the drop**" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("no-samples", ["--variants", "int8-static"], "int8-static calibrates on sample inputs"),
        ("missing", [], "does not exist"),
        ("bad-samples", ["--samples", "{bad}"], "has shape [3, 5], the model takes [-1, 64]"),
        ("full-out", [], "exists and is not empty"),
    ],
)
def test_refusals_say_why_and_write_nothing(
    tmp_path: Path, setup: str, args: list[str], message: str
) -> None:
    model = (
        tmp_path / "nope" if setup == "missing" else copy_model("digits", tmp_path, samples=False)
    )
    out = tmp_path / "out"
    if setup == "full-out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 5), dtype=np.float32))
    done = optimize(model, "--out", out, *[a.format(bad=bad) for a in args])
    assert done.returncode == 2, done.stdout
    assert message in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {"bad.npy", "digits"} - ({"digits"} if setup == "missing" else set())
        | ({"out"} if setup == "full-out" else set())
    )
    if setup == "full-out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path,
) -> None:
    model = copy_model("digits", tmp_path)
    done = optimize(model, "--out", "/proc/inscale-optimize-out")  # not writable, even as root
    assert done.returncode == 2
    assert "cannot be written" in done.stderr
