"""A real Prometheus (Debian's `prometheus`, a plain background process on a loopback port)
scraping a test server, and the PromQL we ship: every dashboard target, recording rule and alert.

Used by tests/test_monitoring_prometheus.py (every expression returns series) and
tests/test_drift_e2e.py (the drift alerts fire on shifted traffic).
"""

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support.grpc_server import free_port

ROOT = Path(__file__).resolve().parent.parent.parent
PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
RULES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
ALERT_RULES = PROMETHEUS_DIR / "rules" / "inscale-alerts.yml"
DASHBOARDS = ROOT / "monitoring" / "grafana" / "dashboards"
# Grafana's variables, as "All" and a rate window that holds several 1 s scrapes.
GRAFANA_VARIABLES = {"$model": ".*", "$instance": ".*", "$__rate_interval": "1m"}


def prometheus_binary() -> str:
    """The binary's path, or the test is skipped saying how to get it."""
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "Debian's prometheus is not installed here; `scripts/dev test` installs it "
            "(apt-get install --no-install-recommends prometheus)"
        )
    return found


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
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    found.append((f"{path.stem}: {rule['record']}", rule["expr"]))
                else:
                    found.append((f"{path.stem}: {rule['alert']} (no threshold)", left_side(rule)))
    return found


def alerts() -> list[tuple[str, str]]:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
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
    """Scrapes `target` every second and evaluates `rule_files` (the shipped rules unless
    told) every second: a test sees a change within a few seconds."""

    def __init__(self, workdir: Path, target: str, rule_files: list[Path] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(p) for p in (RULES if rule_files is None else rule_files)]
        [job] = config["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.logfile = workdir / "prometheus.log"
        self.log = self.logfile.open("w")
        self.proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

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

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) with their labels and expanded annotations."""
        body = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        assert body["status"] == "success", body
        found: list[dict[str, Any]] = body["data"]["alerts"]
        return found

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()
