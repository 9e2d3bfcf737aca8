"""`POST /predict` against a real server: answers equal direct ONNX Runtime, row for row."""

import gzip
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from inscale.settings import BUNDLED_REPOSITORY
from support.server import ServerProcess

SAMPLE = json.loads((BUNDLED_REPOSITORY / "sample_input.json").read_text())


def ort_run(model_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


@pytest.mark.parametrize("model", ["digits", "digits-wide"])
def test_bundled_models_match_onnx_runtime_and_labels(
    bundled_server: ServerProcess, model: str
) -> None:
    rows = np.asarray(SAMPLE["inputs"], dtype=np.float32)
    expected = ort_run(BUNDLED_REPOSITORY / model / "1" / "model.onnx", {"input": rows})
    single = [
        httpx.post(f"{bundled_server.url}/predict", json={"model": model, "inputs": [row]}).json()
        for row in rows.tolist()
    ]
    multi = httpx.post(
        f"{bundled_server.url}/predict", json={"model": model, "inputs": rows.tolist()}
    ).json()
    assert multi["model"] == model and multi["version"] == 1
    assert multi["outputs"]["label"] == SAMPLE["labels"]
    assert [r["outputs"]["label"][0] for r in single] == SAMPLE["labels"]
    np.testing.assert_allclose(
        multi["outputs"]["probabilities"], expected["probabilities"], rtol=1e-5, atol=1e-6
    )
    for i, response in enumerate(single):
        np.testing.assert_allclose(
            response["outputs"]["probabilities"],
            expected["probabilities"][i : i + 1],
            rtol=1e-5,
            atol=1e-6,
        )


def test_model_may_be_left_out_when_a_default_is_configured(bundled_server: ServerProcess) -> None:
    response = httpx.post(f"{bundled_server.url}/predict", json={"inputs": SAMPLE["inputs"][:1]})
    assert response.status_code == 200
    assert response.json()["model"] == "digits"


def test_several_inputs_and_outputs_with_int64(server: ServerProcess, test_repo: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    idx = rng.integers(0, 3, size=(5, 2)).astype(np.int64)
    response = httpx.post(
        f"{server.url}/predict",
        json={"model": "pair", "inputs": {"x": x.tolist(), "idx": idx.tolist()}},
    )
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    expected = ort_run(test_repo / "pair" / "1" / "model.onnx", {"x": x, "idx": idx})
    assert set(outputs) == {"scaled", "picked"}
    np.testing.assert_allclose(outputs["scaled"], expected["scaled"], rtol=1e-6)
    np.testing.assert_allclose(outputs["picked"], expected["picked"], rtol=1e-6)


def test_concurrent_requests_each_get_their_own_rows(server: ServerProcess) -> None:
    """Many distinct requests at once (merged by the batcher): every answer is its own."""

    def call(i: int) -> tuple[int, list[list[float]]]:
        rows = [[float(i), float(i) + 0.5, -float(i), 1.0]] * (1 + i % 3)
        response = httpx.post(f"{server.url}/predict", json={"model": "identity", "inputs": rows})
        assert response.status_code == 200, response.text
        return i, response.json()["outputs"]["y"]

    with ThreadPoolExecutor(16) as pool:
        for i, rows in pool.map(call, range(64)):
            assert rows == [[float(i), float(i) + 0.5, -float(i), 1.0]] * (1 + i % 3)


def test_variable_length_inputs_are_padded_and_outputs_trimmed(
    server: ServerProcess, test_repo: Path
) -> None:
    lengths = [1, 4, 2, 7, 3, 7, 5]

    def call(n: int) -> tuple[int, dict[str, list[Any]]]:
        tokens = [[float(n * 10 + j) for j in range(n)], [float(-j) for j in range(n)]]
        response = httpx.post(
            f"{server.url}/predict", json={"model": "varlen", "inputs": {"tokens": tokens}}
        )
        assert response.status_code == 200, response.text
        return n, response.json()["outputs"]

    path = test_repo / "varlen" / "1" / "model.onnx"
    with ThreadPoolExecutor(len(lengths)) as pool:
        for n, outputs in pool.map(call, lengths):
            tokens = np.array(
                [[n * 10 + j for j in range(n)], [-j for j in range(n)]], dtype=np.float32
            )
            expected = ort_run(path, {"tokens": tokens})
            assert np.asarray(outputs["doubled"]).shape == (2, n)  # trimmed back to n
            np.testing.assert_allclose(outputs["doubled"], expected["doubled"])
            np.testing.assert_allclose(outputs["total"], expected["total"])


def test_model_without_batch_axis_is_served_one_request_at_a_time(server: ServerProcess) -> None:
    x = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    response = httpx.post(f"{server.url}/predict", json={"model": "fixed", "inputs": x})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["y"] == [[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]
    meta = httpx.get(f"{server.url}/models/fixed").json()["versions"][0]
    assert meta["batchable"] is False and meta["batching"]["enabled"] is False


def test_batching_disabled_by_config_runs_each_request_alone(server: ServerProcess) -> None:
    before = httpx.get(f"{server.url}/models/nobatch").json()["versions"][0]["stats"]["runs"]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: httpx.post(
                    f"{server.url}/predict", json={"model": "nobatch", "inputs": [[i, 0, 0, 0]]}
                ),
                range(16),
            )
        )
    after = httpx.get(f"{server.url}/models/nobatch").json()["versions"][0]["stats"]["runs"]
    assert after - before == 16


def test_version_can_be_named(server: ServerProcess) -> None:
    ok = httpx.post(
        f"{server.url}/predict", json={"model": "identity", "version": 1, "inputs": [[1, 2, 3, 4]]}
    )
    assert ok.status_code == 200 and ok.json()["version"] == 1
    missing = httpx.post(
        f"{server.url}/predict", json={"model": "identity", "version": 9, "inputs": [[1, 2, 3, 4]]}
    )
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'identity' has no version 9"}


def test_compressed_predict_bodies_are_inflated_and_unknown_encodings_are_415(
    client: httpx.Client,
) -> None:
    body = json.dumps({"model": "identity", "inputs": [[1.0, 2.0, 3.0, 4.0]] * 3}).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        answer = client.post(
            "/predict",
            content=packed,
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"]["y"] == [[1.0, 2.0, 3.0, 4.0]] * 3
    refused = client.post(
        "/predict",
        content=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "br"},
    )
    assert refused.status_code == 415
    assert refused.json() == {"error": "Content-Encoding 'br' is not supported (gzip or deflate)"}
