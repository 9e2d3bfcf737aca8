"""Triton's real perf_analyzer measures a real server over HTTP with binary tensors.

perf_analyzer reads `/v2`, the model's metadata and config, and (since `statistics` is
advertised) the statistics around every measurement window, then sends binary requests and
parses binary responses: this is the protocol check that no unit test can fake.
"""

import csv
import json
import subprocess
from pathlib import Path

import httpx
import pytest
from onnx import TensorProto

from loadtests.harness.perf_analyzer import find_perf_analyzer
from support.onnx_models import add_model, identity
from support.server import running_server


@pytest.mark.slow
def test_perf_analyzer_measures_a_concurrency_range_with_binary_tensors(tmp_path: Path) -> None:
    tool = find_perf_analyzer()
    if isinstance(tool, str):
        pytest.skip(f"perf_analyzer cannot run on this machine: {tool}")
    repo = tmp_path / "repo"
    add_model(repo, "echo", identity(TensorProto.FLOAT, ("N", 8)))
    report, export = tmp_path / "report.csv", tmp_path / "requests.json"
    measure = [
        "--concurrency-range", "1:2",
        # Windows of 100 requests each, and every window counts as stable: this checks the
        # protocol, not the figures, and a busy machine must not end the sweep early.
        "--measurement-mode", "count_windows",
        "--measurement-request-count", "100",
        "--stability-percentage", "1000",
        "--input-tensor-format", "binary",
        "--output-tensor-format", "binary",
        "-f", str(report),
        "--profile-export-file", str(export),
    ]  # fmt: skip
    with running_server(repo) as server:
        run = subprocess.run(
            tool.command(server.url, "echo", *measure),
            env=tool.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        stats = httpx.get(f"{server.url}/v2/models/echo/stats").json()["model_stats"][0]
    with report.open() as f:
        rows = list(csv.DictReader(f))
    # One row per concurrency level (perf_analyzer orders them by throughput).
    assert sorted(row["Concurrency"] for row in rows) == ["1", "2"], run.stdout + run.stderr
    assert all(float(row["Inferences/Second"]) > 0 for row in rows)
    experiments = json.loads(export.read_text())["experiments"]
    requests = [r for e in experiments for r in e["requests"]]
    assert len(requests) > 0
    # It decoded our binary answers: an identity model hands each input back unchanged.
    for request in requests[:200]:
        assert request["response_outputs"] == [{"y": request["request_inputs"]["x"]}]
    assert stats["inference_stats"]["success"]["count"] >= len(requests)
    assert stats["inference_stats"]["fail"]["count"] == 0
