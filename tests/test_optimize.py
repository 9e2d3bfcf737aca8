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
        ("not-onnx", [], "model.onnx cannot be loaded"),
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
    if setup == "not-onnx":
        (model / "1" / "model.onnx").write_bytes(b"not a model")
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


def _classifier(path: Path) -> Path:
    """A float classifier with plain ONNX ops: x [N, 8] -> softmax(x W + b) [N, 4]. Class k is
    the argmax of row pairs (2k, 2k+1), so rows built around one class agree under int8."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((8, 4), dtype=np.float32)
    for k in range(4):
        weights[2 * k : 2 * k + 2, k] = 1.0
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.full(4, 0.1, dtype=np.float32), "b"),
        ],
    )
    import onnx

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save(model, str(path))
    return path


def test_static_int8_and_fp16_of_a_plain_graph_are_scored_by_agreement(tmp_path: Path) -> None:
    model = tmp_path / "clf"
    _classifier(model / "1" / "model.onnx")
    rng = np.random.default_rng(7)
    rows = rng.random((96, 8), dtype=np.float32) * 0.2
    rows[np.arange(96), 2 * (np.arange(96) % 4)] += 3.0  # each row clearly one class
    (model / "samples.json").write_text(json.dumps({"inputs": rows.tolist()}))  # no labels
    out = tmp_path / "out"
    done = optimize(model, "--out", out, "--variants", "int8-static,fp16", "--batch-sizes", "1")
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["failed"] == {} and not results["labelled"]
    rows_by = {row["variant"]: row for row in results["rows"]}
    for name in ("int8-static", "fp16"):
        row = rows_by[name]
        assert row["score_name"] == "agreement" and row["score"] == 1.0 and row["within"]
        assert 0 < row["max_abs_diff"]["probabilities"] < 0.05
    assert rows_by["int8-static"]["batch_dependence"] < 1e-6  # ranges fixed at calibration
    import onnx

    static = onnx.load(str(out / "int8-static.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in static.graph.node}
    fp16 = onnx.load(str(out / "fp16.onnx"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io kept


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("s.npz", {"y": np.zeros((2, 8), np.float32)}, "has no rows for input 'x'"),
        ("s.npz", {"x": np.zeros((2, 8), np.float32), "labels": [1]}, "1 labels for 2 rows"),
        ("s.json", {"rows": []}, 'expected {"inputs": ..., "labels": ...}'),
        ("s.json", {"inputs": [["a"] * 8]}, "is not FP32 rows"),
        ("s.json", {"inputs": []}, "has shape [0], the model takes [-1, 8]"),
        ("s.npz", {"x": np.zeros((0, 8), np.float32)}, "same, nonzero number of rows"),
        ("s.csv", "x", "use .npz, .npy or .json"),
        ("s.npy", b"not numpy", "cannot be read"),
    ],
)
def test_sample_files_that_do_not_fit_are_refused_by_name(
    tmp_path: Path, name: str, content: object, message: str
) -> None:
    from inscale.optimize.samples import SampleError, load_samples
    from inscale.signature import signature_of

    model = _classifier(tmp_path / "clf" / "1" / "model.onnx")
    signature = signature_of(ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]))
    path = tmp_path / name
    if isinstance(content, dict) and name.endswith(".npz"):
        np.savez(path, **content)
    elif isinstance(content, dict):
        path.write_text(json.dumps(content))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(str(content))
    with pytest.raises(SampleError) as raised:
        load_samples(path, signature)
    assert message in raised.value.message and str(path) in raised.value.message
    good = tmp_path / "good.npy"
    np.save(good, np.ones((3, 8), np.float32))
    assert load_samples(good, signature).rows == 3
