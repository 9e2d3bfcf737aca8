"""Execution provider choice: the user's order, what the build offers, CPU as the fallback."""

import shutil
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from inscale.models.config import RuntimeConfig
from inscale.models.providers import CPU, choose_providers
from inscale.models.session import open_session
from support.onnx_models import add_model, identity
from support.server import running_server


def test_unavailable_providers_are_skipped_and_cpu_is_always_last() -> None:
    chosen = choose_providers(
        [("cuda", {"device_id": 0}), ("tensorrt", {}), ("cpu", {})],
        available=["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert [c.name for c in chosen] == ["CUDAExecutionProvider", CPU]
    assert chosen[0].options == {"device_id": "0"}  # ORT takes provider options as strings
    assert [c.name for c in choose_providers([("cuda", {})], available=[CPU])] == [CPU]
    flags = choose_providers([("cuda", {"enable_cuda_graph": True})], ["CUDAExecutionProvider"])
    assert flags[0].options == {"enable_cuda_graph": "1"}


def test_session_reports_the_provider_it_really_uses(tmp_path: Path) -> None:
    path = add_model(tmp_path, "m", identity())
    session = open_session(path, RuntimeConfig(), [("cuda", {}), ("cpu", {})])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert session.providers == (CPU,)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(session.run({"x": x})["y"], x)


def test_model_asking_for_gpu_falls_back_to_cpu_and_says_so(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers() and shutil.which("nvidia-smi"):
        pytest.skip("a GPU is present: the fallback path is not taken here")
    add_model(tmp_path, "gpu-wanted", identity(), config={"providers": ["cuda", "cpu"]})
    with running_server(tmp_path) as proc:
        meta = httpx.get(f"{proc.url}/models/gpu-wanted").json()["versions"][0]
        assert meta["providers"] == [CPU]
        response = httpx.post(f"{proc.url}/predict", json={"inputs": [[1, 2, 3, 4]]})
        assert response.json()["outputs"]["y"] == [[1.0, 2.0, 3.0, 4.0]]
        log = proc.log_text()
        assert "CUDAExecutionProvider" in log  # either "not available" or "running on CPU"


@pytest.mark.gpu
@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers() or not shutil.which("nvidia-smi"),
    reason="needs onnxruntime-gpu and an NVIDIA GPU with its driver (none on this machine)",
)
def test_cuda_session_runs_on_the_gpu(tmp_path: Path) -> None:
    path = add_model(tmp_path, "m", identity())
    session = open_session(path, RuntimeConfig(), [("cuda", {})])
    assert session.providers[0] == "CUDAExecutionProvider"
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(session.run({"x": x})["y"], x)
