"""Drift monitoring end to end: real inscale, real Prometheus with the shipped rules, Locust.

A server on a copy of the bundled digits (with its reference, built from the training split)
samples every row (`drift: {sample: 1.0, window_s: 20}`, so the window turns over in
seconds). Prometheus scrapes it every second and evaluates the shipped recording and alert
rules every second, the alerts' `for:` cut to 5 s (promtool checks the shipped 10 minutes in
monitoring/prometheus/tests). Locust first sends held-out digits rows: the input score stays
under the 0.25 threshold on a full window and InscaleInputDrift stays silent. Then it sends
the same rows with every pixel halved: the score passes 0.25, the alert fires, its
annotation names the worst features, and every drift query of the dashboards and rules
returns series.
"""

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from support.prometheus import ALERT_RULES, RULES, Prometheus, expressions, prometheus_binary
from support.server import ServerProcess, running_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "service/inscale/bundled_models/digits"
LOCUSTFILE = Path(__file__).resolve().parent / "support" / "drift_locustfile.py"
WINDOW_S = 20
FOR_S = 5
THRESHOLD = 0.25  # InscaleInputDrift's, checked against the shipped rule below
CLEAN_S = 12  # long enough for 500 rows and more than FOR_S above them
FIRE_DEADLINE_S = 30
INPUT_ALERT = 'ALERTS{alertname="InscaleInputDrift"}'


@dataclass
class Stack:
    server: ServerProcess
    prometheus: Prometheus
    samples: Path


def quick_rules(workdir: Path) -> list[Path]:
    """The shipped rule files, the alerts' `for:` cut to FOR_S seconds."""
    rules = []
    for path in RULES:
        document = yaml.safe_load(path.read_text())
        if path == ALERT_RULES:
            for group in document["groups"]:
                for rule in group["rules"]:
                    rule["for"] = f"{FOR_S}s"
        rules.append(workdir / path.name)
        rules[-1].write_text(yaml.safe_dump(document))
    return rules


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary()  # skips before anything starts when it is missing
    repo = tmp_path_factory.mktemp("drift_repo")
    shutil.copytree(DIGITS, repo / "digits")
    config = {"drift": {"sample": 1.0, "window_s": WINDOW_S}}
    (repo / "digits" / "config.yaml").write_text(yaml.safe_dump(config))
    workdir = tmp_path_factory.mktemp("drift_prometheus")
    with running_server(repo) as server:
        prometheus = Prometheus(workdir, f"127.0.0.1:{server.port}", quick_rules(workdir))
        try:
            prometheus.wait_ready()
            yield Stack(server, prometheus, repo / "digits" / "samples.npz")
        finally:
            prometheus.stop()


def locust(stack: Stack, seconds: float, scale: float) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    cmd += ["-H", stack.server.url, "-u", "2", "-r", "2", "-t", f"{seconds}s", "--only-summary"]
    cmd += ["--samples", str(stack.samples), "--scale", str(scale)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(run: subprocess.Popen[str], timeout_s: float = 30) -> str:
    """Wait for the run (stopping it if asked to end early); its output, failing on errors."""
    output, _ = run.communicate(timeout=timeout_s)
    assert run.returncode == 0, f"locust failed ({run.returncode}):\n{output}"
    return output


def after(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


def value(prometheus: Prometheus, expr: str) -> float:
    [sample] = prometheus.query(expr)
    return float(sample["value"][1])


def test_the_shipped_threshold_is_the_one_tested() -> None:
    groups = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    [rule] = [r for g in groups for r in g["rules"] if r.get("alert") == "InscaleInputDrift"]
    assert rule["expr"].endswith(f"> {THRESHOLD}")


def test_held_out_rows_keep_the_alert_silent_and_shifted_rows_fire_it(stack: Stack) -> None:
    prometheus = stack.prometheus
    started = time.monotonic()
    finish(locust(stack, CLEAN_S, 1.0))
    time.sleep(2)  # the last rows binned (1 s) and scraped (1 s)
    digits = 'model="digits", version="1"'
    # A full window of held-out rows: the rows guard let the score count (what the alert
    # reads), and it stayed low the whole time; neither drift alert even went pending.
    assert value(prometheus, f"inscale_drift_window_rows{{{digits}}}") >= 500
    guarded = f"model_version:inscale_drift_input_score:max{{{digits}}}"
    clean = value(prometheus, f"max_over_time({guarded}[{CLEAN_S}s])")
    assert 0 < clean < THRESHOLD
    drift_alerts = 'ALERTS{alertname=~"InscaleInputDrift|InscalePredictionShift"}'
    assert prometheus.query(drift_alerts) == [], "held-out rows raised a drift alert"

    shifted = time.monotonic()
    run = locust(stack, FIRE_DEADLINE_S, 0.5)
    crossed: float | None = None
    fired: float | None = None
    try:
        deadline = shifted + FIRE_DEADLINE_S
        while time.monotonic() < deadline and fired is None:
            time.sleep(0.5)
            score = prometheus.query(f"inscale_drift_input_score{{{digits}}}")
            if crossed is None and score and float(score[0]["value"][1]) > THRESHOLD:
                crossed = time.monotonic() - shifted
            if prometheus.query(INPUT_ALERT.replace("}", ', alertstate="firing"}')):
                fired = time.monotonic() - shifted
    finally:
        run.terminate()  # Locust stops its users and exits 0 on SIGTERM
    finish(run)
    print(
        f"clean phase {shifted - started:.1f} s, worst score {clean:.3f}; shifted rows: score "
        f"over {THRESHOLD} after {after(crossed)}, alert firing after {after(fired)}"
    )
    assert crossed is not None, "the input score never passed the threshold"
    assert fired is not None, f"InscaleInputDrift did not fire within {FIRE_DEADLINE_S} s"
    assert fired >= crossed + FOR_S - 1  # it waited for `for:` (scrape and evaluation jitter)

    [alert] = [a for a in prometheus.alerts() if a["labels"]["alertname"] == "InscaleInputDrift"]
    assert alert["state"] == "firing"
    assert alert["labels"]["model"] == "digits" and alert["labels"]["version"] == "1"
    assert alert["labels"]["severity"] == "warning"
    assert "drifted from the reference" in alert["annotations"]["summary"]
    assert "Worst features: input[" in alert["annotations"]["description"]

    # The drift row of the dashboard and every drift rule have data now.
    drift = [(where, expr) for where, expr in expressions() if "inscale_drift_" in expr]
    assert any("Prediction distribution" in where for where, _ in drift)
    empty = [f"{where}: {expr}" for where, expr in drift if not prometheus.query(expr)]
    assert not empty, "drift expressions with no series:\n" + "\n".join(empty)
    shares = prometheus.query(
        f"model_version_output_class:inscale_drift_prediction_share:ratio{{{digits}}}"
    )
    assert abs(sum(float(s["value"][1]) for s in shares) - 1) < 1e-6
