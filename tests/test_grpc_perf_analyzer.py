"""Triton's real perf_analyzer measures a real server over gRPC, unary and streaming.

perf_analyzer reads the server's and the model's metadata and config over gRPC, the
statistics around each window, then sends `ModelInfer` (or, with `--streaming`, one
`ModelStreamInfer` stream) with raw tensors and decodes the raw answers: the check that our
messages are the ones Triton's C++ client expects. The bundled `digits` model, as a user would
point perf_analyzer at it.
"""

import csv
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

import inscale
from loadtests.harness.perf_analyzer import PerfAnalyzer, find_perf_analyzer
from support.grpc_server import GrpcServer, running_grpc_server

MODEL = "digits"
CHECKED = 50  # answers compared with ONNX Runtime run directly, per run


@pytest.fixture(scope="module")
def tool() -> PerfAnalyzer:
    found = find_perf_analyzer()
    if isinstance(found, str):
        pytest.skip(f"perf_analyzer cannot run on this machine: {found}")
    return found


@pytest.fixture(scope="module")
def server(tool: PerfAnalyzer) -> Iterator[GrpcServer]:
    with running_grpc_server(None) as proc:  # no repository: the bundled models
        yield proc


def stats(server: GrpcServer) -> dict[str, int]:
    document = httpx.get(f"{server.url}/v2/models/{MODEL}/stats", timeout=10).json()
    inference = document["model_stats"][0]["inference_stats"]
    return {"success": inference["success"]["count"], "fail": inference["fail"]["count"]}


@pytest.mark.slow
@pytest.mark.parametrize("mode", [[], ["--streaming"]], ids=["unary", "streaming"])
def test_perf_analyzer_over_grpc_measures_a_concurrency_range(
    tool: PerfAnalyzer, server: GrpcServer, tmp_path: Path, mode: list[str]
) -> None:
    report, export = tmp_path / "report.csv", tmp_path / "requests.json"
    measure = [
        "--concurrency-range", "1:2",
        # Windows of 200 ms, and every window counts as stable: this checks the protocol,
        # not the figures, so a busy machine must not stretch or end the sweep.
        "--measurement-mode", "time_windows",
        "--measurement-interval", "200",
        "--stability-percentage", "1000",
        "-f", str(report),
        "--profile-export-file", str(export),
        *mode,
    ]  # fmt: skip
    before = stats(server)
    run = subprocess.run(
        tool.command(server.target, MODEL, *measure, protocol="grpc"),
        env=tool.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    after = stats(server)
    with report.open() as f:
        rows = list(csv.DictReader(f))
    # One row per concurrency level (perf_analyzer orders them by throughput).
    assert sorted(row["Concurrency"] for row in rows) == ["1", "2"], run.stdout + run.stderr
    assert all(float(row["Inferences/Second"]) > 0 for row in rows), rows
    experiments = json.loads(export.read_text())["experiments"]
    requests = [r for e in experiments for r in e["requests"]]
    assert len(requests) > 0
    # The server counted at least what perf_analyzer measured (it also warms up), none failed.
    assert after["success"] - before["success"] >= len(requests)
    assert after["fail"] == before["fail"]
    assert_answers_are_the_models(requests[:CHECKED])


def assert_answers_are_the_models(requests: list[dict[str, Any]]) -> None:
    """perf_analyzer decoded our raw outputs into what ONNX Runtime gives for its inputs."""
    path = next(Path(inscale.__file__).parent.glob(f"bundled_models/{MODEL}/*/model.onnx"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for request in requests:
        row = np.array(request["request_inputs"]["input"], dtype=np.float32).reshape(1, 64)
        label, probabilities = session.run(["label", "probabilities"], {"input": row})
        [answer] = request["response_outputs"]
        assert answer["label"] == int(label[0])
        np.testing.assert_allclose(
            answer["probabilities"], probabilities[0], rtol=1e-5, atol=1e-6, equal_nan=True
        )
