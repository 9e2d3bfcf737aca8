"""Every PromQL expression we ship returns data from a real Prometheus scraping real inscale.

A real `inscale serve` process takes a short mixed load (good requests of 1 to 4 rows over
HTTP and gRPC, bad input, a model that raises, unknown routes and models) while Debian's `prometheus` (a plain background
process on a loopback port, scraping every second with the shipped rules) scrapes it. Then
each expression of the dashboards, the recording rules and the alert rules goes through
Prometheus's HTTP API and must return at least one series. An alert's expression is checked
whole (it parses and runs) and without its threshold (the part before the comparison must
return series: the alert is wired to real data, it just is not firing). GPU and drift
expressions must return nothing here: without a GPU, or a model with a drift reference, the
series are absent, not zero (tests/test_drift_e2e.py runs the drift ones on digits).
"""

import contextlib
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from support.grpc_server import free_port
from support.prometheus import Prometheus, alerts, expressions, prometheus_binary
from support.server import ServerProcess, running_server

SETTLE_TIMEOUT_S = 45

pytestmark = pytest.mark.slow


class Load:
    """A few threads of mixed traffic until stopped: bounded in time by the test."""

    def __init__(self, url: str, grpc_target: str, threads: int = 4) -> None:
        self.url = url
        self.grpc_target = grpc_target
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + 120  # never outlives a broken test
        grpc = grpcclient.InferenceServerClient(self.grpc_target)
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                pick = rng.random()
                if pick < 0.70:
                    rows = [[1.0, 2.0, 3.0, 4.0]] * rng.randint(1, 4)
                    client.post("/predict", json={"model": "identity", "inputs": rows})
                elif pick < 0.85:
                    # gRPC: the protocol panels' series; unknown models answer NOT_FOUND.
                    model = "identity" if pick < 0.83 else "no-such-model"
                    count = rng.randint(1, 4)
                    x = grpcclient.InferInput("x", [count, 4], "FP32")
                    x.set_data_from_numpy(np.ones((count, 4), dtype=np.float32))
                    with contextlib.suppress(InferenceServerException):
                        grpc.infer(model, [x], client_timeout=10)
                elif pick < 0.90:
                    client.post("/predict", json={"model": "identity", "inputs": [[1, 2]]})
                elif pick < 0.95:
                    bad = {"x": [[1, 2, 3]], "idx": [[0, 7]]}  # GatherElements raises
                    client.post("/predict", json={"model": "pair", "inputs": bad})
                else:
                    client.get("/no/such/route")
                self.sent += 1
        grpc.close()


def absent_here(expr: str) -> bool:
    """Series this stack cannot have: no GPU, and no model of the test repository carries a
    drift reference (tests/test_drift_e2e.py runs the drift expressions on one that does)."""
    return "inscale_gpu_" in expr or "inscale_drift_" in expr


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    return prometheus_binary()


@dataclass
class Stack:
    server: ServerProcess
    prometheus: Prometheus
    sent: int  # requests the load sent
    empty: list[str]  # expressions still without series when the load stopped


@pytest.fixture(scope="module")
def stack(
    prometheus_bin: str, test_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """inscale and Prometheus, after a load that lasted until every expression had data."""
    grpc_port = free_port()
    with running_server(test_repo, "--grpc-port", str(grpc_port)) as server:
        prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{server.port}")
        try:
            prometheus.wait_ready()
            rest = [(w, e) for w, e in expressions() if not absent_here(e)]
            with Load(server.url, f"127.0.0.1:{grpc_port}") as load:
                deadline = time.monotonic() + SETTLE_TIMEOUT_S
                while True:  # the first scrapes and rule runs take seconds: poll
                    empty = [
                        f"{where}: {expr}" for where, expr in rest if not prometheus.query(expr)
                    ]
                    if not empty or time.monotonic() > deadline:
                        break
                    time.sleep(1)
            yield Stack(server, prometheus, load.sent, empty)
        finally:
            prometheus.stop()


def test_every_shipped_expression_returns_series(stack: Stack) -> None:
    assert stack.sent > 100
    assert not stack.empty, "expressions with no series:\n" + "\n".join(stack.empty)
    for where, expr in expressions():
        if absent_here(expr):  # runs (parses) but finds nothing: no GPU, no reference
            assert stack.prometheus.query(expr) == [], where
    for _, expr in alerts():
        stack.prometheus.query(expr)  # whole alert expressions run; firing or not is data


def test_alerts_fire_on_what_the_load_did(stack: Stack) -> None:
    """`pair` failed on every request and `broken` never loaded: both alerts' conditions hold."""
    prometheus = stack.prometheus
    expr = dict(alerts())
    failing = prometheus.query(expr["InscaleErrorRatioHigh"])
    assert {s["metric"]["model"] for s in failing} == {"pair"}
    unavailable = prometheus.query(expr["InscaleModelUnavailable"])
    assert {s["metric"]["model"] for s in unavailable} >= {"broken", "badconfig"}
    assert prometheus.query(expr["InscaleDown"]) == []


def test_the_data_behind_the_panels_is_right(stack: Stack) -> None:
    """A few values that must hold after the load."""
    prometheus = stack.prometheus

    def scalar(expr: str) -> float:
        [sample] = prometheus.query(expr)
        return float(sample["value"][1])

    assert scalar('sum(inscale_requests_total{model="identity", outcome="success"})') > 50
    assert scalar('sum(inscale_requests_total{model="identity", outcome="bad_input"})') > 0
    assert scalar('sum(inscale_requests_total{model="pair", outcome="model_error"})') > 0
    assert scalar('sum(inscale_http_requests_total{route="<unmatched>", status="404"})') > 0
    assert scalar('sum(inscale_grpc_requests_total{method="ModelInfer", code="OK"})') > 0
    assert scalar('sum(inscale_grpc_requests_total{method="ModelInfer", code="NOT_FOUND"})') > 0
    # An unknown model's name creates no per-model series, over gRPC as over HTTP.
    assert prometheus.query('inscale_requests_total{model="no-such-model"}') == []
    mean_batch = scalar(
        'sum(inscale_inference_rows_total{model="identity"})'
        ' / sum(inscale_model_runs_total{model="identity"})'
    )
    assert 1.0 <= mean_batch <= 32.0  # 1 to 4 rows a request, merged when concurrent
    p99 = prometheus.query('model:inscale_request_duration_seconds:p99_rate1m{model="identity"}')
    assert 0 < float(p99[0]["value"][1]) < 10


def test_template_variables_find_their_values(stack: Stack) -> None:
    server, prometheus = stack.server, stack.prometheus
    for label, metric in (("model", "inscale_requests_total"), ("instance", "inscale_build_info")):
        response = httpx.get(
            f"{prometheus.url}/api/v1/label/{label}/values", params={"match[]": metric}
        )
        values = response.json()["data"]
        assert values, f"label_values({metric}, {label}) is empty"
    assert f"127.0.0.1:{server.port}" in values
