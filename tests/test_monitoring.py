"""The monitoring assets are valid: promtool accepts them, alert unit tests pass, dashboards
are in sync with their generator and every panel says what it shows and in which unit.

Whether each query returns data is checked against a real Prometheus in
tests/test_monitoring_prometheus.py.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
PROMETHEUS = MONITORING / "prometheus"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
NO_PROMTOOL = "promtool is not installed: `scripts/dev test` installs Debian's prometheus package"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.skip(NO_PROMTOOL)
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False
    )


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def test_promtool_check_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", *sorted(str(p) for p in (PROMETHEUS / "rules").glob("*")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    result = promtool("test", "rules", "tests/inscale-alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_waits_and_explains() -> None:
    groups = yaml.safe_load((PROMETHEUS / "rules" / "inscale-alerts.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"]]
    names = {a["alert"] for a in alerts}
    assert {
        "InscaleLatencyP99AboveSLO",
        "InscaleErrorRatioHigh",
        "InscaleQueueSaturated",
        "InscaleMemoryNearLimit",
        "InscaleInputDrift",
        "InscalePredictionShift",
    } <= names
    tested = (PROMETHEUS / "tests" / "inscale-alerts.test.yml").read_text()
    for alert in alerts:
        assert alert.get("for"), f"{alert['alert']} has no for: clause"
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert f"alertname: {alert['alert']}" in tested, f"{alert['alert']} has no unit test"


def test_dashboards_are_what_the_generator_writes(tmp_path: Path) -> None:
    script = MONITORING / "grafana" / "build_dashboards.py"
    before = {name: (DASHBOARDS / name).read_text() for name in dashboards()}
    copy = tmp_path / "grafana"
    shutil.copytree(MONITORING / "grafana", copy)
    subprocess.run([sys.executable, str(copy / script.name)], check=True, capture_output=True)
    for name, text in before.items():
        assert (copy / "dashboards" / name).read_text() == text, (
            f"{name} is stale: run python monitoring/grafana/build_dashboards.py"
        )


def test_panels_have_titles_units_and_the_template_variables() -> None:
    boards = dashboards()
    assert set(boards) == {"inscale-overview.json", "inscale-scaling.json"}
    for name, board in boards.items():
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"datasource", "model", "instance"} <= variables, name
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
        for panel in panels:
            assert panel["title"] and panel["description"], panel
            assert panel["targets"], panel["title"]
            if panel["type"] == "heatmap":
                assert panel["options"]["yAxis"]["unit"]
            else:
                assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
            for target in panel["targets"]:
                assert target["expr"] and target["legendFormat"], panel["title"]
    overview = " ".join(p["title"] for p in boards["inscale-overview.json"]["panels"])
    for word in ("Requests per second", "latency", "queue", "Batch size", "Memory", "CPU"):
        assert word in overview
    for word in ("by protocol", "gRPC calls by status code", "gRPC server error ratio"):
        assert word in overview
    for word in (
        "Input drift",
        "Prediction drift",
        "Worst input features",
        "Prediction distribution",
    ):
        assert word in overview
    scaling = " ".join(p["title"] for p in boards["inscale-scaling.json"]["panels"])
    for word in ("Replicas", "per replica", "Latency as load grows"):
        assert word in scaling


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    provisioning = MONITORING / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((provisioning / "dashboards" / "inscale.yml").read_text())
    assert provider["providers"][0]["options"]["path"].startswith("/var/lib/grafana/dashboards")


def test_monitoring_scripts_are_lint_clean() -> None:
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "monitoring"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "monitoring"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
