"""Every PromQL expression we ship returns data from a real Prometheus scraping real inscale.

A real `inscale serve` process takes a short mixed load (good requests of 1 to 4 rows over
HTTP and gRPC, bad input, a model that raises, unknown routes and models) while Debian's `prometheus` (a plain background
process on a loopback port, scraping every second with the shipped rules) scrapes it. Then
each expression of the dashboards, the recording rules and the alert rules goes through
Prometheus's HTTP API and must return at least one series. An alert's expression is checked
whole (it parses and runs) and without its threshold (the part before the comparison must
return series: the alert is wired to real data, it just is not firing). GPU expressions must
return nothing here: without a GPU the series are absent, not zero.
"""

import contextlib
import json
import random
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml
from tritonclient.utils import InferenceServerException

from support.server import ServerProcess, running_server

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
DASHBOARDS = ROOT / "monitoring" / "grafana" / "dashboards"
# Grafana's variables, as "All" and a rate window that holds several 1 s scrapes.
GRAFANA_VARIABLES = {"$model": ".*", "$instance": ".*", "$__rate_interval": "1m"}
SETTLE_TIMEOUT_S = 45

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def expressions() -> list[tuple[str, str]]:
    """(where it comes from, PromQL) for every panel target, recording rule and alert.

    For an alert, the expression without its threshold; the whole one is in `alerts()`.
    """
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, value)
                found.append((f"{path.stem}: {panel['title']}", expr))
    for path in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    found.append((f"{path.stem}: {rule['record']}", rule["expr"]))
                else:
                    found.append((f"{path.stem}: {rule['alert']} (no threshold)", left_side(rule)))
    return found


def alerts() -> list[tuple[str, str]]:
    path = PROMETHEUS_DIR / "rules" / "inscale-alerts.yml"
    groups = yaml.safe_load(path.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def left_side(rule: dict[str, Any]) -> str:
    """The alert's expression up to its first comparison outside brackets and quotes."""
    expr: str = rule["expr"]
    depth, quoted = 0, False
    for i, char in enumerate(expr):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "([{":
            depth += 1
        elif not quoted and char in ")]}":
            depth -= 1
        elif not quoted and depth == 0 and re.match(r"\s(>|<|==|!=|>=|<=)\s", expr[i - 1 : i + 3]):
            return expr[:i].strip()
    raise AssertionError(f"alert {rule['alert']} has no comparison to split at: {expr}")


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(p) for p in sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))]
        [job] = config["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.logfile = workdir / "prometheus.log"

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready:\n" + self.logfile.read_text())

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


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


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "Debian's prometheus is not installed here; `scripts/dev test` installs it "
            "(apt-get install --no-install-recommends prometheus)"
        )
    return found


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
            rest = [(w, e) for w, e in expressions() if "inscale_gpu_" not in e]
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
        if "inscale_gpu_" in expr:  # runs (parses) but finds nothing: no GPU, no series
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
