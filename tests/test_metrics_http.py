"""`GET /metrics` on a real server: HTTP metrics by route template, per-model outcomes, workers.

The session server is shared with other tests, so checks compare scrapes taken before and
after the requests a test sends.
"""

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.server import ServerProcess, running_server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def http_count(samples: Samples, method: str, route: str, status: int) -> float:
    return get(
        samples, "inscale_http_requests_total", method=method, route=route, status=str(status)
    )


def outcome(samples: Samples, model: str, which: str) -> float:
    return get(samples, "inscale_requests_total", model=model, version="1", outcome=which)


def test_http_requests_are_labelled_by_route_template(server: ServerProcess) -> None:
    before = scrape(server.url)
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/models/identity").status_code == 200
        assert client.get("/models/no-such-model").status_code == 404
        assert client.get("/predict").status_code == 405
        for path in ("/wp-admin", "/a/b/c", "/.env"):
            assert client.get(path).status_code == 404
        ok = client.post("/predict", json={"model": "identity", "inputs": [[1, 2, 3, 4]]})
        assert ok.status_code == 200
    after = scrape(server.url)
    delta = {
        key: after[key] - before.get(key, 0.0)
        for key in after
        if key[0] == "inscale_http_requests_total" and after[key] != before.get(key, 0.0)
    }
    routes = {dict(labels)["route"] for _, labels in delta}
    assert routes >= {"/models/{name}", "/predict", "<unmatched>"}
    assert not any("no-such-model" in r or "wp-admin" in r for r in routes)  # never raw paths
    assert http_count(after, "GET", "/models/{name}", 404) >= 1
    assert (
        http_count(after, "GET", "<unmatched>", 404) - http_count(before, "GET", "<unmatched>", 404)
        == 3
    )
    assert (
        http_count(after, "GET", "/predict", 405) - http_count(before, "GET", "/predict", 405) == 1
    )
    assert (
        http_count(after, "POST", "/predict", 200) - http_count(before, "POST", "/predict", 200)
        == 1
    )
    name = "inscale_http_request_duration_seconds_count"
    labels = {"method": "POST", "route": "/predict", "status": "200"}
    assert get(after, name, **labels) - get(before, name, **labels) == 1


def test_bad_input_and_model_errors_are_counted_per_model(server: ServerProcess) -> None:
    before = scrape(server.url)
    with httpx.Client(base_url=server.url) as client:
        wrong_shape = client.post("/predict", json={"model": "pair", "inputs": {"x": [[1, 2]]}})
        wrong_dtype = client.post(
            "/predict", json={"model": "pair", "inputs": {"x": [["a", "b", "c"]], "idx": [[0, 1]]}}
        )
        raises = client.post(
            "/predict", json={"model": "pair", "inputs": {"x": [[1, 2, 3]], "idx": [[0, 7]]}}
        )
        good = client.post(
            "/predict", json={"model": "pair", "inputs": {"x": [[1, 2, 3]], "idx": [[2, 0]]}}
        )
        unknown = client.post("/predict", json={"model": "nope", "inputs": [[1]]})
    assert [wrong_shape.status_code, wrong_dtype.status_code] == [400, 400]
    assert [raises.status_code, good.status_code, unknown.status_code] == [500, 200, 404]
    after = scrape(server.url)

    def moved(which: str) -> float:
        return outcome(after, "pair", which) - outcome(before, "pair", which)

    assert moved("bad_input") == 2  # the dtype error is found before the batcher sees it
    assert moved("model_error") == 1
    assert moved("success") == 1
    assert moved("rejected") == moved("timeout") == moved("cancelled") == 0
    duration = "inscale_request_duration_seconds_count"
    pair = {"model": "pair", "version": "1"}
    assert get(after, duration, **pair) - get(before, duration, **pair) == 1  # answered only
    assert not any(dict(labels).get("model") == "nope" for _, labels in after)


def test_model_gauges_describe_what_is_loaded(server: ServerProcess) -> None:
    samples = scrape(server.url)
    ready = {"model": "identity", "version": "1", "state": "READY"}
    assert get(samples, "inscale_model_state", **ready) == 1
    assert get(samples, "inscale_model_state", **{**ready, "state": "LOADING"}) == 0
    broken = {"model": "broken", "version": "1", "state": "UNAVAILABLE"}
    assert get(samples, "inscale_model_state", **broken) == 1
    identity = {"model": "identity", "version": "1"}
    assert get(samples, "inscale_model_load_duration_seconds", **identity) > 0
    assert get(samples, "inscale_model_size_bytes", **identity) > 0
    assert get(samples, "inscale_queue_capacity_requests", model="busy", version="1") == 3
    assert get(samples, "inscale_queue_depth_requests", **identity) == 0
    assert get(samples, "inscale_requests_in_flight", **identity) == 0
    assert get(samples, "process_resident_memory_bytes") > 10 * 2**20
    assert get(samples, "process_open_fds") > 0
    assert get(samples, "python_gc_collections_total", generation="0") >= 0
    assert get(samples, "inscale_memory_limit_bytes") > 0
    assert not any(name.startswith("inscale_gpu_") for name, _ in samples)  # no GPU here
    assert not any(name.endswith("_created") for name, _ in samples)


def test_metrics_can_be_turned_off(test_repo: Path) -> None:
    with running_server(test_repo, env={"INSCALE_METRICS": "false"}) as server:
        response = httpx.get(f"{server.url}/metrics")
        assert response.status_code == 404
        ok = httpx.post(
            f"{server.url}/predict", json={"model": "identity", "inputs": [[1, 2, 3, 4]]}
        )
        assert ok.status_code == 200


def _multiprocess_dir(parent: int) -> Path:
    """The folder the CLI gave its workers (their environment, set after the parent began)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in children:
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError("the workers have no PROMETHEUS_MULTIPROC_DIR")


@pytest.mark.slow
def test_counters_add_up_across_worker_processes(test_repo: Path) -> None:
    with running_server(test_repo, "--workers", "2") as server:
        assert server.proc is not None
        folder = _multiprocess_dir(server.proc.pid)
        assert folder.is_dir()
        # Readiness answers for one worker; the metrics say when both have the model.
        labels = {"model": "identity", "version": "1"}
        ready = {**labels, "state": "READY"}
        deadline = time.monotonic() + 30
        while get(scrape(server.url), "inscale_model_state", **ready) < 2:
            assert time.monotonic() < deadline, "the second worker never got ready"
            time.sleep(0.2)
        for i in range(40):  # a new connection each: the kernel spreads them over the workers
            response = httpx.post(
                f"{server.url}/predict",
                json={"model": "identity", "inputs": [[i, i, i, i], [i, i, i, i]]},
            )
            assert response.status_code == 200
        pids = {int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("counter_*.db")}
        assert len(pids) == 2, f"expected files of two workers, got {sorted(pids)}"
        # Each worker hands its counts to the shared files at least every second.
        deadline = time.monotonic() + 10
        while outcome(scrape(server.url), "identity", "success") < 40:
            assert time.monotonic() < deadline, "counts of some worker never arrived"
            time.sleep(0.2)
        for _ in range(6):  # whichever worker answers the scrape reports every worker's counts
            samples = scrape(server.url)
            assert outcome(samples, "identity", "success") == 40
            assert get(samples, "inscale_inference_rows_total", **labels) == 80
            assert get(samples, "inscale_request_duration_seconds_count", **labels) == 40
            assert http_count(samples, "POST", "/predict", 200) == 40
            # Gauges are summed over the live workers: both hold a queue of 1024 and are ready.
            assert get(samples, "inscale_queue_capacity_requests", **labels) == 2048
            assert get(samples, "inscale_model_state", **ready) == 2
            assert get(samples, "process_resident_memory_bytes") > 20 * 2**20
            assert get(samples, "process_cpu_seconds_total") > 0
        # A worker that dies is replaced by uvicorn; its live gauges must stop counting.
        victim = next(iter(pids))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            live = {int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("gauge_livesum_*.db")}
            samples = scrape(server.url)
            capacity = get(samples, "inscale_queue_capacity_requests", **labels)
            if victim not in live and len(live) == 2 and capacity == 2048:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"dead worker still counted: live={live}, capacity={capacity}")
        assert outcome(samples, "identity", "success") == 40  # counters keep the dead's counts
    assert not folder.exists(), "the metrics folder must be removed when the server exits"
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None


PER_MODEL = (
    "inscale_requests_total",
    "inscale_request_duration_seconds_count",
    "inscale_inference_rows_total",
    "inscale_model_runs_total",
    "inscale_queue_duration_seconds_count",
)


def per_model_delta(before: Samples, after: Samples, model: str) -> dict[tuple[str, str], float]:
    """How each per-model series of `model` moved, keyed by (name, outcome label or '')."""
    moved: dict[tuple[str, str], float] = {}
    for (name, labels), value in after.items():
        found = dict(labels)
        if name in PER_MODEL and found.get("model") == model:
            moved[(name, found.get("outcome", ""))] = value - before.get((name, labels), 0.0)
    return moved


def test_per_model_series_are_the_same_whichever_protocol_served(server: ServerProcess) -> None:
    """The same requests through /predict and through V2 move every per-model series alike:
    the series come from the data plane's events, not from a protocol's layer."""
    rows = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]

    def v2(data: list[list[float]]) -> dict[str, object]:
        flat = [v for row in data for v in row]
        shape = [len(data), len(data[0])]
        return {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": flat}]}

    def predict(client: httpx.Client, data: list[list[float]]) -> httpx.Response:
        return client.post("/predict", json={"model": "identity", "inputs": data})

    def infer(client: httpx.Client, data: list[list[float]]) -> httpx.Response:
        return client.post("/v2/models/identity/infer", json=v2(data))

    rounds = {"predict": predict, "v2": infer}
    moved = {}
    with httpx.Client(base_url=server.url) as client:
        for protocol, send in rounds.items():
            before = scrape(server.url)
            statuses = [send(client, rows).status_code, send(client, rows[:1]).status_code]
            statuses.append(send(client, [[1.0, 2.0, 3.0]]).status_code)  # wrong shape
            assert statuses == [200, 200, 400], protocol
            moved[protocol] = per_model_delta(before, scrape(server.url), "identity")
    assert moved["predict"] == moved["v2"]
    assert moved["v2"][("inscale_requests_total", "success")] == 2
    assert moved["v2"][("inscale_requests_total", "bad_input")] == 1
    assert moved["v2"][("inscale_inference_rows_total", "")] == 3
    assert moved["v2"][("inscale_request_duration_seconds_count", "")] == 2
