"""Model control through the V2 repository API: explicit mode, load, reload, unload, index."""

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from support.onnx_models import add_model, busy, identity, two_in_two_out
from support.server import ServerProcess, running_server
from support.v2 import model_counters, offset_model, v2_infer_body, wait_for

ONE_THREAD = {"runtime": {"intra_op_threads": 1}}


def triton_client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


def index(url: str, **body: Any) -> list[dict[str, str]]:
    response = httpx.post(f"{url}/v2/repository/index", json=body or None, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("v2-explicit")
    add_model(repo, "identity", identity())
    add_model(repo, "pair", two_in_two_out())
    broken = repo / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx file")
    with running_server(repo, "--model-control", "explicit") as proc:
        yield proc


def test_explicit_mode_starts_ready_with_no_model_loaded(explicit: ServerProcess) -> None:
    client = triton_client(explicit)
    assert client.is_server_ready()
    assert httpx.get(f"{explicit.url}/health/ready").status_code == 200
    assert not client.is_model_ready("pair")
    assert index(explicit.url, ready=True) == []
    assert {"name": "pair", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"} in index(
        explicit.url
    )
    with pytest.raises(InferenceServerException) as error:
        client.get_model_metadata("pair")
    assert error.value.status() == "404"
    assert error.value.message() == "unknown model 'pair'"


def test_load_serve_and_unload_through_the_api(explicit: ServerProcess) -> None:
    client = triton_client(explicit)
    client.load_model("identity")
    assert client.is_model_ready("identity")
    assert index(explicit.url, ready=True) == [
        {"name": "identity", "version": "1", "state": "READY", "reason": ""}
    ]
    x = triton.InferInput("x", [2, 4], "FP32")
    x.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
    np.testing.assert_array_equal(client.infer("identity", [x]).as_numpy("y"), np.ones((2, 4)))
    client.load_model("identity")  # a reload: still serving, same version
    assert client.infer("identity", [x]).get_response()["model_version"] == "1"
    client.unload_model("identity")
    assert not client.is_model_ready("identity")
    with pytest.raises(InferenceServerException) as gone:
        client.infer("identity", [x])
    assert gone.value.status() == "404"
    assert gone.value.message() == "unknown model 'identity'"
    assert "identity" not in {m["name"] for m in client.get_inference_statistics()["model_stats"]}
    client.unload_model("pair")  # in the repository, not loaded: already unloaded


def test_control_bodies_may_be_empty_or_carry_parameters(explicit: ServerProcess) -> None:
    url = f"{explicit.url}/v2/repository/models/pair"
    for body in (b"", b"{}", b'{"parameters": {"unload_dependents": false}}'):
        loaded = httpx.post(f"{url}/load", content=body)
        assert (loaded.status_code, loaded.content) == (200, b"")
        unloaded = httpx.post(f"{url}/unload", content=body)
        assert (unloaded.status_code, unloaded.content) == (200, b"")


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        (
            "..%2F..%2Fetc/load",
            400,
            "'../../etc' is not a valid model name (a plain folder name is needed)",
        ),
        ("a%2Fb/load", 400, "'a/b' is not a valid model name (a plain folder name is needed)"),
        ("%2E%2E/load", 400, "'..' is not a valid model name (a plain folder name is needed)"),
        (
            ".hidden/unload",
            400,
            "'.hidden' is not a valid model name (a plain folder name is needed)",
        ),
        ("nope/unload", 404, "unknown model 'nope'"),
    ],
)
def test_names_that_are_not_plain_folder_names_are_refused(
    explicit: ServerProcess, path: str, status: int, message: str
) -> None:
    response = httpx.post(f"{explicit.url}/v2/repository/models/{path}")
    assert response.status_code == status, response.text
    assert response.json() == {"error": message}


@pytest.mark.parametrize("action", ["load", "unload"])
def test_a_name_too_long_for_the_file_system_is_a_400_and_the_log_stays_short(
    explicit: ServerProcess, action: str
) -> None:
    """Found by a user: 5,000 characters answered 500 (OSError: File name too long) and the
    whole path went to the log three times."""
    name = "x" * 5000
    logged_before = len(explicit.log_text())
    response = httpx.post(f"{explicit.url}/v2/repository/models/{name}/{action}")
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": f"model name '{'x' * 200}...' (5000 characters) is too long: a folder name "
        "takes at most 255 bytes"
    }
    # 255 bytes is the limit, not 255 characters; and control characters are refused too.
    wide = httpx.post(f"{explicit.url}/v2/repository/models/{'é' * 128}/{action}")
    assert wide.status_code == 400 and "too long" in wide.json()["error"]
    control = httpx.post(f"{explicit.url}/v2/repository/models/a%01b/{action}")
    assert control.status_code == 400 and "not a valid model name" in control.json()["error"]
    assert "x" * 201 not in explicit.log_text()[logged_before:]
    assert httpx.get(f"{explicit.url}/v2/health/live").status_code == 200


def test_load_failures_say_why(explicit: ServerProcess) -> None:
    client = triton_client(explicit)
    with pytest.raises(InferenceServerException) as missing:
        client.load_model("nope")
    assert missing.value.status() == "404"
    assert missing.value.message().startswith("model 'nope' is not in the repository ")
    with pytest.raises(InferenceServerException) as broken:
        client.load_model("broken")
    assert broken.value.status() == "400"
    assert broken.value.message().startswith("model 'broken' failed to load: version 1: ")
    assert "ONNX Runtime cannot load it" in broken.value.message()
    (row,) = [r for r in index(explicit.url) if r["name"] == "broken"]
    assert row["state"] == "UNAVAILABLE"
    assert "ONNX Runtime cannot load it" in row["reason"]
    with pytest.raises(InferenceServerException) as override:
        client.load_model("pair", config='{"max_batch_size": 4}')
    assert override.value.status() == "501"
    assert override.value.message() == (
        "load parameter 'config' is not supported: models load from the repository folder only"
    )
    assert httpx.get(f"{explicit.url}/v2/health/ready").status_code == 200


def test_a_new_version_serves_the_old_one_until_it_is_warm(tmp_path: Path) -> None:
    add_model(tmp_path, "versioned", offset_model(1.0), config=ONE_THREAD)
    with running_server(tmp_path) as server, ThreadPoolExecutor(2) as pool:
        # Version 2 runs ~1000 MatMuls on every run, warm-up included: slow to become ready.
        add_model(tmp_path, "versioned", offset_model(2.0, matmuls=1000), version=2)
        loading = pool.submit(triton_client(server).load_model, "versioned")
        answered_by = []
        overlap = 0
        with httpx.Client(base_url=server.url, timeout=30) as http:
            while not loading.done():
                states = {r["version"]: r["state"] for r in index(server.url)}
                body = v2_infer_body("x", [[0, 1, 2, 3]])
                response = http.post("/v2/models/versioned/infer", json=body)
                assert response.status_code == 200, response.text
                answer = response.json()
                version = answer["model_version"]
                assert answer["outputs"][0]["data"] == [int(version) + i for i in range(4)]
                answered_by.append(version)
                overlap += states == {"1": "READY", "2": "LOADING"} and version == "1"
            loading.result()
        # Version 1 answered while version 2 was loading; once 2 answered, 1 never did again.
        assert overlap > 0
        assert answered_by == sorted(answered_by)
        assert index(server.url) == [
            {"name": "versioned", "version": "2", "state": "READY", "reason": ""}
        ]


def busy_body(x: float, work: int) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [x] * 4},
            {"name": "work", "shape": [1], "datatype": "INT64", "data": [work]},
        ]
    }


def test_unload_drains_accepted_requests_and_refuses_new_ones(tmp_path: Path) -> None:
    add_model(
        tmp_path,
        "busy",
        busy(),
        config={**ONE_THREAD, "timeout_ms": 60_000, "batching": {"admission": False}},
    )
    with running_server(tmp_path) as server, ThreadPoolExecutor(4) as pool:
        infer = f"{server.url}/v2/models/busy/infer"
        holder = pool.submit(httpx.post, infer, json=busy_body(-1, 3000), timeout=60)
        wait_for(lambda: model_counters(server.url, "busy")["running"] == 1, "the holder to run")
        queued = pool.submit(httpx.post, infer, json=busy_body(7, 0), timeout=60)
        wait_for(lambda: model_counters(server.url, "busy")["queued"] == 1, "a queued request")
        unloading = pool.submit(triton_client(server).unload_model, "busy")
        wait_for(lambda: index(server.url)[0]["state"] == "UNLOADING", "busy to be unloading")
        refused = httpx.post(infer, json=busy_body(1, 0))
        assert refused.status_code == 503
        assert refused.json() == {"error": "model 'busy' has no ready version (1: UNLOADING)"}
        unloading.result()
        assert holder.result().status_code == 200
        answer = queued.result()
        assert answer.status_code == 200
        assert answer.json()["outputs"][0]["data"] == [7, 7, 7, 7]
        assert index(server.url) == [
            {"name": "busy", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}
        ]


def test_loading_picks_up_a_model_added_to_the_folder(tmp_path: Path) -> None:
    add_model(tmp_path, "identity", identity())
    with running_server(tmp_path) as server:
        client = triton_client(server)
        assert not client.is_model_ready("late")
        shutil.copytree(tmp_path / "identity", tmp_path / "late")
        client.load_model("late")
        assert client.is_model_ready("late")
        assert client.get_model_metadata("late")["versions"] == ["1"]


def model_series(url: str, model: str) -> dict[str, set[str]]:
    """Per gauge, the versions /metrics shows for `model` (counters keep every version's
    total, as Prometheus expects; a gauge says what is true now)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    versions: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        if family.type != "gauge":
            continue
        for sample in family.samples:
            if sample.labels.get("model") == model and "version" in sample.labels:
                versions.setdefault(sample.name, set()).add(sample.labels["version"])
    return versions


def test_a_version_removed_from_the_folder_leaves_metrics_when_the_model_reloads(
    tmp_path: Path,
) -> None:
    add_model(tmp_path, "identity", identity())
    with running_server(tmp_path) as server:
        infer = f"{server.url}/v2/models/identity/infer"
        body = v2_infer_body("x", [[1.0, 2.0, 3.0, 4.0]])
        assert httpx.post(infer, json=body, timeout=10).status_code == 200
        before = model_series(server.url, "identity")
        for name in (
            "inscale_model_state",
            "inscale_queue_depth_requests",
            "inscale_estimated_run_duration_seconds",
        ):
            assert before.get(name) == {"1"}, (name, before)

        shutil.move(tmp_path / "identity" / "1", tmp_path / "identity" / "2")
        triton_client(server).load_model("identity")
        assert httpx.post(infer, json=body, timeout=10).status_code == 200
        after = model_series(server.url, "identity")
        # Version 1 is gone from the folder: none of its gauges is left at a stale value.
        assert all(versions == {"2"} for versions in after.values()), after
        assert "inscale_model_state" in after and "inscale_queue_depth_requests" in after
