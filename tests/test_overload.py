"""Overload and large requests, end to end on a real server: requests split into runs and
reassembled, admission refusing at once what cannot finish in time (HTTP 503 with
Retry-After, gRPC UNAVAILABLE), priorities checked against the model's levels, and what
admission learned and decided, visible in `/models`, the V2 statistics and Prometheus."""

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from support.grpc_server import GrpcServer, running_grpc_server
from support.onnx_models import add_model, busy, identity

ONE_THREAD = {"runtime": {"intra_op_threads": 1}}
TEACH_WORK = 1500  # about half a second of compute per run on one thread
HOLD_WORK = 3000  # about a second


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcServer]:
    repo = tmp_path_factory.mktemp("overload")
    add_model(
        repo, "bulk", identity(), config={"batching": {"max_batch_size": 4, "max_request_rows": 10}}
    )
    add_model(repo, "slow", busy(), config={**ONE_THREAD, "timeout_ms": 60_000})
    add_model(repo, "ranked", identity(), config={"batching": {"priority_levels": 2}})
    add_model(
        repo,
        "chunked",
        busy(),
        config={
            **ONE_THREAD,
            "timeout_ms": 60_000,
            "batching": {"max_batch_size": 4, "admission": False},
        },
    )
    add_model(repo, "slo", identity(), config={"latency_slo_ms": 200})
    with running_grpc_server(repo, "--retry-after-s", "3") as grpc_server:
        yield grpc_server


def model_stats(url: str, name: str) -> dict[str, Any]:
    version: dict[str, Any] = httpx.get(f"{url}/models/{name}").json()["versions"][0]
    return version


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{"):
            series, value = line.rsplit(" ", 1)
            got = ",".join(sorted(series[len(name) + 1 : -1].split(",")))
            if got == wanted:
                return float(value)
    return 0.0


# -- large requests ---------------------------------------------------------------------


def test_a_request_larger_than_a_batch_is_split_and_reassembled_in_order(
    server: GrpcServer,
) -> None:
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    before = model_stats(server.url, "bulk")["stats"]
    answer = httpx.post(f"{server.url}/predict", json={"model": "bulk", "inputs": rows.tolist()})
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"]["y"] == rows.tolist()
    after = model_stats(server.url, "bulk")["stats"]
    assert after["rows"] - before["rows"] == 10
    assert after["runs"] - before["runs"] >= 3, "10 rows cannot run in fewer than 3 runs of 4"
    assert after["succeeded"] - before["succeeded"] == 3  # one per chunk, all answered


def test_split_requests_work_through_v2_binary_and_grpc(server: GrpcServer) -> None:
    rows = np.random.default_rng(1).standard_normal((9, 4)).astype(np.float32)
    http_client = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    given = triton_http.InferInput("x", list(rows.shape), "FP32")
    given.set_data_from_numpy(rows, binary_data=True)
    result = http_client.infer("bulk", [given])
    np.testing.assert_array_equal(result.as_numpy("y"), rows)
    grpc_client = triton_grpc.InferenceServerClient(server.target)
    given_grpc = triton_grpc.InferInput("x", list(rows.shape), "FP32")
    given_grpc.set_data_from_numpy(rows)
    np.testing.assert_array_equal(grpc_client.infer("bulk", [given_grpc]).as_numpy("y"), rows)


def wait_stats(url: str, name: str, check: Any, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        stats: dict[str, Any] = model_stats(url, name)["stats"]
        if check(stats):
            return stats
        assert time.monotonic() < deadline, f"stats never matched: {stats}"
        time.sleep(0.01)


def test_a_client_leaving_drops_every_chunk_still_queued(server: GrpcServer) -> None:
    url = server.url
    before = wait_stats(url, "chunked", lambda s: s["running"] == 0 and s["queued"] == 0)
    # 20 rows in runs of 4: the first chunk holds the instance for about a second.
    body = {
        "model": "chunked",
        "inputs": {"x": [[1.0, 2.0, 3.0, 4.0]] * 20, "work": [HOLD_WORK] + [0] * 19},
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/predict", json=body, timeout=httpx.Timeout(30, read=0.5))
    after = wait_stats(url, "chunked", lambda s: s["running"] == 0 and s["queued"] == 0)
    assert after["cancelled"] - before["cancelled"] == 4, "the four queued chunks left"
    assert after["runs"] - before["runs"] == 1, "only the chunk already running ran"


def test_a_refused_chunk_fails_the_whole_request_with_one_error(server: GrpcServer) -> None:
    url = server.url
    wait_stats(url, "chunked", lambda s: s["running"] == 0 and s["queued"] == 0)
    before = model_stats(url, "chunked")["stats"]
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(
            httpx.post,
            f"{url}/predict",
            json=slow_body(HOLD_WORK) | {"model": "chunked"},
            timeout=60,
        )
        wait_stats(url, "chunked", lambda s: s["running"] == 1)
        # Three chunks queue behind the holder and pass their 100 ms deadline there.
        body = {"model": "chunked", "inputs": {"x": [[1.0, 2.0, 3.0, 4.0]] * 12, "work": [0] * 12}}
        answer = httpx.post(f"{url}/predict", json=body | {"timeout_ms": 100}, timeout=60)
        assert answer.status_code == 504, answer.text
        assert answer.json() == {
            "error": "model 'chunked': request timed out after 100 ms in the queue"
        }
        assert holder.result().status_code == 200
    after = wait_stats(url, "chunked", lambda s: s["running"] == 0 and s["queued"] == 0)
    assert after["timed_out"] - before["timed_out"] == 3, "each queued chunk timed out"
    assert after["runs"] - before["runs"] == 1, "none of the refused request's chunks ran"


def test_past_max_request_rows_is_400_naming_the_limit(server: GrpcServer) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0]] * 11
    answer = httpx.post(f"{server.url}/predict", json={"model": "bulk", "inputs": rows})
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "the request has 11 rows; this model takes at most 10 per request "
        "(its max_request_rows)"
    }
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


# -- admission ----------------------------------------------------------------------------


def slow_body(work: int, **extra: object) -> dict[str, object]:
    return {"model": "slow", "inputs": {"x": [[1.0, 2.0, 3.0, 4.0]], "work": [work]}, **extra}


def test_a_request_that_cannot_finish_in_time_is_refused_at_once(server: GrpcServer) -> None:
    url = server.url
    # Teach the model what a run costs (half a second), one run after the other.
    for _ in range(2):
        taught = httpx.post(f"{url}/predict", json=slow_body(TEACH_WORK), timeout=60)
        assert taught.status_code == 200, taught.text
    estimate_ms = model_stats(url, "slow")["admission"]["estimated_run_ms"]["1"]
    assert estimate_ms > 150, estimate_ms
    shed_before = metric(
        url, "inscale_requests_total", model="slow", version="1", outcome="overloaded"
    )
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(httpx.post, f"{url}/predict", json=slow_body(HOLD_WORK), timeout=60)
        deadline = time.monotonic() + 20
        while model_stats(url, "slow")["stats"]["running"] != 1:
            assert time.monotonic() < deadline, "the holder never started"
            time.sleep(0.01)
        started = time.monotonic()
        refused = httpx.post(f"{url}/predict", json=slow_body(0, timeout_ms=150), timeout=60)
        refused_after_s = time.monotonic() - started
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "3"
        message = refused.json()["error"]
        assert message.startswith("model 'slow' is overloaded: the request would finish in about")
        # The deadline runs from the request's arrival: a little of it is gone at admission.
        assert re.search(r"after its deadline in 1[34]\d\.\d ms$", message), message
        v2 = httpx.post(
            f"{url}/v2/models/slow/infer",
            json={
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]},
                    {"name": "work", "datatype": "INT64", "shape": [1], "data": [0]},
                ],
                "parameters": {"timeout": 150_000},
            },
        )
        assert v2.status_code == 503 and "overloaded" in v2.json()["error"]
        grpc_client = triton_grpc.InferenceServerClient(server.target)
        x = triton_grpc.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        work = triton_grpc.InferInput("work", [1], "INT64")
        work.set_data_from_numpy(np.zeros(1, np.int64))
        with pytest.raises(InferenceServerException) as raised:
            grpc_client.infer("slow", [x, work], timeout=150_000)
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
        assert "overloaded" in str(raised.value.message())
        assert holder.result().status_code == 200
    # Refused without waiting for the holder (a second of compute) to finish.
    assert refused_after_s < 0.5 * HOLD_WORK / 3000, refused_after_s
    admission = model_stats(url, "slow")["admission"]
    assert admission["shed"]["overloaded"] == 3
    stats = httpx.get(f"{url}/v2/models/slow/stats").json()["model_stats"][0]
    assert stats["admission"]["shed"]["overloaded"] == 3
    moved = metric(url, "inscale_requests_total", model="slow", version="1", outcome="overloaded")
    assert moved - shed_before == 3


def test_the_objective_and_the_learned_costs_are_visible(server: GrpcServer) -> None:
    for _ in range(3):
        assert (
            httpx.post(
                f"{server.url}/predict", json={"model": "slo", "inputs": [[1, 2, 3, 4]]}
            ).status_code
            == 200
        )
    detail = model_stats(server.url, "slo")
    admission = detail["admission"]
    assert admission["latency_slo_ms"] == 200
    assert set(admission["estimated_run_ms"]) == {"1", "2", "4", "8", "16", "32"}
    assert 0 < admission["estimated_run_ms"]["1"] < 200
    assert admission["admitted"] >= 3
    assert set(admission["shed"]) == {"queue_full", "overloaded", "preempted", "late", "timeout"}
    seconds = metric(
        server.url,
        "inscale_estimated_run_duration_seconds",
        model="slo",
        version="1",
        batch_size="32",
    )
    assert 0 < seconds < 0.2
    assert metric(server.url, "inscale_admitted_requests_total", model="slo", version="1") >= 3


# -- priorities ---------------------------------------------------------------------------


def test_priorities_are_accepted_within_the_model_levels(server: GrpcServer) -> None:
    url = server.url
    for priority in (0, 1, 2):
        body = {"model": "ranked", "inputs": [[1, 2, 3, 4]], "priority": priority}
        assert httpx.post(f"{url}/predict", json=body).status_code == 200
    too_low = httpx.post(
        f"{url}/predict", json={"model": "ranked", "inputs": [[1, 2, 3, 4]], "priority": 3}
    )
    assert too_low.status_code == 400
    assert too_low.json() == {
        "error": "the \"priority\" parameter must be 0 (default) to 2 for model 'ranked' "
        "(its priority_levels), got 3"
    }
    v2 = httpx.post(
        f"{url}/v2/models/ranked/infer",
        json={
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
            "parameters": {"priority": 3},
        },
    )
    assert v2.status_code == 400 and "priority_levels" in v2.json()["error"]
    grpc_client = triton_grpc.InferenceServerClient(server.target)
    x = triton_grpc.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    assert grpc_client.infer("ranked", [x], priority=1).as_numpy("y").tolist() == [[1, 1, 1, 1]]
    with pytest.raises(InferenceServerException) as raised:
        grpc_client.infer("ranked", [x], priority=3)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert model_stats(url, "ranked")["stats"]["bad_input"] == 3


def test_a_bad_priority_config_is_a_load_error(tmp_path: Path) -> None:
    from inscale.errors import ConfigError
    from inscale.models.config import load_model_config

    (tmp_path / "config.yaml").write_text(
        "batching:\n  priority_levels: 2\n  default_priority_level: 3\n"
    )
    with pytest.raises(ConfigError, match="default_priority_level 3 is past priority_levels 2"):
        load_model_config(tmp_path)
