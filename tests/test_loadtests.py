"""loadtests/ against real servers: short headless Locust runs, an overloaded server, the
report, the local scaling scenario behind haproxy, the HPA replay, and the harness's
disturbance detector against a real busy loop.

Every run goes through the scripts' command lines (`python -m loadtests.NAME`), as a user
would run them.
"""

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from loadtests import bench_report, hpa
from loadtests.harness.disturbance import Detector, Disturbance
from loadtests.harness.wrk import WrkReport
from support.onnx_models import add_model
from support.server import ServerProcess, running_server

ROOT = Path(__file__).resolve().parent.parent
LOADTESTS = ROOT / "loadtests"
WIDE = ROOT / "service/inscale/bundled_models/digits-wide/1/model.onnx"
NAMES = ("/predict", "/v2/models/{model}/infer [json]", "/v2/models/{model}/infer [binary]")


def run_script(name: str, *args: str, timeout_s: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "-m", f"loadtests.{name.removesuffix('.py')}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def load(run_dir: Path, url: str, *args: str) -> Path:
    """run_load.py against `url`, unpinned (other tests share the cores)."""
    run_script("run_load.py", str(run_dir), "--url", url, "--client-cpus", "", *args)
    return run_dir


def stats(run_dir: Path) -> dict[str, dict[str, str]]:
    with (run_dir / "locust_stats.csv").open() as source:
        return {row["Name"]: row for row in csv.DictReader(source)}


def final_counts(run_dir: Path) -> dict[str, tuple[int, int]]:
    """Requests and failures per name from Locust's JSON, written once every user stopped
    (its CSVs are rewritten each second and may miss the last one)."""
    entries = json.loads((run_dir / "locust_stats.json").read_text())
    return {e["name"]: (e["num_requests"], e["num_failures"]) for e in entries}


def failures(run_dir: Path) -> dict[tuple[str, str], int]:
    with (run_dir / "locust_failures.csv").open() as source:
        return {(r["Name"], r["Error"]): int(r["Occurrences"]) for r in csv.DictReader(source)}


def request_log(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "requests.csv").open() as source:
        return list(csv.DictReader(source))


def liar() -> onnx.GraphProto:
    """Takes the digits input and answers label -1 for every row: a 200 with a wrong answer."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["input", "axes"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Cast", ["nothing"], ["zeros"], to=TensorProto.INT64),
            helper.make_node("Add", ["zeros", "minus_one"], ["label"]),
        ],
        "liar",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        initializer=[
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array(-1, dtype=np.int64), "minus_one"),
        ],
    )
    return graph


@pytest.fixture(scope="module")
def troubled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`overloaded`: digits-wide that queues at most 2 requests for at most 1 ms each, one
    row per run, so 18 users get both 503s (queue full) and 504s (deadline passed while
    queued). `liar`: a model whose every answer is wrong."""
    repo = tmp_path_factory.mktemp("troubled")
    (repo / "overloaded" / "1").mkdir(parents=True)
    (repo / "overloaded" / "1" / "model.onnx").symlink_to(WIDE)
    (repo / "overloaded" / "config.yaml").write_text(
        # No admission: these runs are about a full queue and requests timing out in it.
        "batching: {max_batch_size: 1, max_queue_size: 2, admission: false}\n"
        "timeout_ms: 1\nwarmup: false\n"
        "runtime: {intra_op_threads: 1}\n"
    )
    add_model(repo, "liar", liar())
    with running_server(repo) as server:
        yield server


@pytest.fixture(scope="module")
def ramp(bundled_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-second ramp (2, 4, 6 users) of all three users on digits-wide."""
    run_dir = tmp_path_factory.mktemp("ramp")
    args = ["--shape", "ramp", "--peak-users", "6", "--seconds", "6", "--ramp-steps", "3"]
    return load(run_dir, bundled_server.url, *args, "--metrics-interval", "0.5")


def test_valid_traffic_gets_correct_answers_and_no_failures(ramp: Path) -> None:
    by_name = stats(ramp)
    for name in NAMES:
        assert int(by_name[name]["Request Count"]) > 0, name
        assert by_name[name]["Failure Count"] == "0", name
    assert failures(ramp) == {}
    rows = request_log(ramp)
    counts = final_counts(ramp)
    assert len(rows) == sum(n for n, _ in counts.values())
    assert {name for name, (n, failed) in counts.items() if n > 0 and failed == 0} == set(NAMES)
    assert {row["users"] for row in rows} == {"2", "4", "6"}
    assert all(row["failure"] == "" for row in rows)
    run = json.loads((ramp / "run.json").read_text())
    assert run["client"]["exit_code"] == 0
    assert (ramp / "locust_report.html").stat().st_size > 0
    metrics = (ramp / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) >= 6  # every half second for 6 s or more


def test_wrong_answers_are_failures_even_with_200(troubled: ServerProcess, tmp_path: Path) -> None:
    args = ["--model", "liar", "--shape", "steady", "--peak-users", "3", "--seconds", "2"]
    run_dir = load(tmp_path, troubled.url, *args)
    found = failures(run_dir)
    for name in NAMES:
        assert found.get((name, "CatchResponseError('wrong answer')"), 0) > 0, found
    assert {row["failure"] for row in request_log(run_dir)} == {"wrong answer"}


def test_overloaded_server_sheds_and_times_out(troubled: ServerProcess, tmp_path: Path) -> None:
    """Both classes for every user; V2 answers a timeout with 503, told apart by its message."""
    args = ["--model", "overloaded", "--shape", "steady", "--peak-users", "18", "--seconds", "3"]
    run_dir = load(tmp_path, troubled.url, *args)
    found = failures(run_dir)
    for name in NAMES:
        assert found.get((name, "CatchResponseError('shed (503)')"), 0) > 0, found
        assert found.get((name, "CatchResponseError('timeout (504)')"), 0) > 0, found
    classes = {row["failure"] for row in request_log(run_dir)}
    assert classes <= {"", "shed (503)", "timeout (504)"}
    # The report counts them too.
    run_script("report.py", str(run_dir), "--model", "overloaded")
    report = (run_dir / "report.md").read_text()
    assert "shed (503)" in report and "timeout (504)" in report


def test_distributed_run_logs_every_request(bundled_server: ServerProcess, tmp_path: Path) -> None:
    """Locust master and two workers: the workers' rows reach the master's request log."""
    args = ["--shape", "steady", "--peak-users", "4", "--seconds", "3", "--processes", "2"]
    run_dir = load(tmp_path, bundled_server.url, *args, "--user", "PredictUser")
    (requests, failed), *others = final_counts(run_dir).values()
    assert others == [] and failed == 0
    rows = request_log(run_dir)
    assert len(rows) == requests > 0
    # Stamped from the master's timeline of its target, sampled every 0.1 s: a row from
    # before the first sample after the start would say 0.
    users = [row["users"] for row in rows]
    assert set(users) <= {"0", "4"} and users.count("4") > 0.9 * len(users)


def test_report_writes_plots_and_states_the_knee(ramp: Path, tmp_path: Path) -> None:
    out = run_script("report.py", str(ramp), "--out", str(tmp_path), "--p99-target-ms", "60000")
    assert "knee at 6 users" in out
    for name in ("throughput", "latency", "batch_size", "memory", "timeline"):
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) < 100_000, name
    report = (tmp_path / "report.md").read_text()
    assert "**Knee: 6 users**" in report
    assert "the ramp did not reach the knee" in report
    levels = json.loads((tmp_path / "report.json").read_text())["levels"]
    assert [level["users"] for level in levels] == [2, 4, 6]
    assert all(level["mean_batch_rows"] >= 1 for level in levels)  # from the server's metrics

    run_script("report.py", str(ramp), "--out", str(tmp_path), "--p99-target-ms", "0.001")
    assert "**No level meets the target**" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["knee_users"] is None


@pytest.mark.skipif(
    not (shutil.which("haproxy") and shutil.which("wrk")),
    reason="needs haproxy and wrk (scripts/dev test installs them)",
)
def test_scaling_scenario_behind_haproxy(tmp_path: Path) -> None:
    args = ["--replicas", "1,2", "--concurrency", "4", "--step-seconds", "1"]
    run_script("scale_local.py", str(tmp_path), *args, "--warmup-seconds", "0", "--retries", "0")
    result = json.loads((tmp_path / "scaling.json").read_text())
    assert [(s["replicas"], s["concurrency"]) for s in result["steps"]] == [(1, 4), (2, 4)]
    for step in result["steps"]:
        assert step["errors"] == 0 and step["requests_per_s"] > 0, step
        assert len(step["replica_cores"]) == step["replicas"]
    table = (tmp_path / "scaling.md").read_text()
    assert "cores per replica" in table and "What limits the gain" in table
    assert (tmp_path / "scaling.png").read_bytes().startswith(b"\x89PNG")
    # Every replica and the balancer were stopped: none of their ports answers.
    ports = []
    for config in tmp_path.glob("replicas-*/haproxy.cfg"):
        ports += re.findall(r"127\.0\.0\.1:(\d+)", config.read_text())
    assert len(ports) == 2 + 3  # a balancer and its replicas, for 1 and for 2 replicas
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()


def test_hpa_replay_follows_the_formula_and_waits_to_scale_down() -> None:
    policy = hpa.Policy(target=10, max_replicas=8, metric_window_s=0)
    # 40 in flight for a minute, then 10 for ten minutes.
    samples = [(float(t), 40.0 if t < 60 else 10.0) for t in range(0, 660)]
    at = {round(d.time): d.replicas for d in hpa.simulate(samples, policy, start=1)}
    assert at[15] == 4  # ceil(1 * 40 / 10); the default policy allows +4 per 15 s
    assert at[30] == at[45] == 4  # 10 per pod: on target
    assert at[60] == at[330] == 4  # 10 in all wants 1, but 4 was recommended at 45 s...
    assert at[345] == 1  # ...and the 5-minute stabilization window has now passed it


def test_hpa_replay_reads_a_manifest_and_keeps_its_scale_down_rate(tmp_path: Path) -> None:
    manifest = tmp_path / "hpa.yaml"
    manifest.write_text(
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\n"
        "metadata: {name: inscale}\n"
        "spec:\n  minReplicas: 1\n  maxReplicas: 6\n"
        "  metrics:\n"
        "  - type: Resource\n    resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}\n"
        "  - type: Pods\n    pods:\n"
        "      metric: {name: inscale_requests_in_flight}\n"
        "      target: {type: AverageValue, averageValue: 10500m}\n"
        "  behavior:\n    scaleDown:\n      stabilizationWindowSeconds: 0\n"
        "      policies: [{type: Pods, value: 1, periodSeconds: 60}]\n"
    )
    policy = hpa.policy_from_manifest(manifest)
    assert (policy.target, policy.min_replicas, policy.max_replicas) == (10.5, 1, 6)
    assert policy.metric == "inscale_requests_in_flight"
    assert policy.down == hpa.Direction(0, (hpa.Rule("Pods", 1, 60),))
    assert policy.up == hpa.Policy(target=1).up  # not in the manifest: the defaults

    samples = [(float(t), 10.0) for t in range(0, 200)]  # wants 1 replica from the start
    at = {round(d.time): d.replicas for d in hpa.simulate(samples, policy, start=4)}
    assert (at[15], at[60], at[75], at[135]) == (3, 3, 2, 1)  # one pod a minute at most


def test_detector_sees_a_busy_loop_on_the_measured_core() -> None:
    """The failure it exists for: work that is not ours on the measured core is reported in
    cores (not diluted over several), and the window is judged disturbed."""
    core = min(os.sched_getaffinity(0))
    detector = Detector([core])
    spin = "import time\nend = time.monotonic() + 4\nwhile time.monotonic() < end: pass"
    # Bounded twice over: the loop ends itself after 4 s, and is killed after the window.
    disturber = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", spin])
    try:
        time.sleep(0.3)  # running before the window opens
        with detector.window([], 1.5) as seen:
            time.sleep(1.5)
    finally:
        disturber.kill()
        disturber.wait()
    found = seen[0]
    assert found.other_cores > 0.5, found
    assert found.disturbed and "other work took" in found.reasons[0], found.reasons


def test_detector_flags_a_core_that_runs_slower_per_cpu_second() -> None:
    """What time accounting cannot see: the probe's work per CPU second fell, nothing else."""
    detector = Detector([0])
    detector.fastest[0] = 80.0  # ns per probe iteration, the run's fastest
    quiet = Disturbance(1.0, 1.0, 0.1, 0.0, 0.0, None, 0.0, probe_ns={0: 84.0})
    slow = Disturbance(1.0, 1.0, 0.1, 0.0, 0.0, None, 0.0, probe_ns={0: 120.0})
    assert detector.rejudge(quiet).reasons == []
    assert detector.rejudge(slow).reasons == ["core 0 ran 50% slower"]


def test_a_zero_latency_cell_is_invalid_not_a_division_by_zero() -> None:
    zero = WrkReport(5000, 1_000_000, 0, 0, 0.0, 0, 0, 0, 0)
    assert "latency of 0" in (bench_report.invalid_reason(zero) or "")
    row = {"model": "wide-nobatch", "concurrency": 1, "p50_ms": 0.0, "requests_per_s": 5e3}
    rows = [
        row | {"invalid": bench_report.invalid_reason(zero)},
        {"model": "wide", "concurrency": 1, "p50_ms": 0.5, "requests_per_s": 2e3, "invalid": None},
    ]
    idle = bench_report.target_idle_latency(rows)
    assert idle["passed"] is None and "valid" in idle["detail"]
    baseline = [r | {"disturbed": False, "p99_ms": 0.0} for r in rows]
    current = [r | {"disturbed": False, "p99_ms": 1.0, "invalid": None} for r in rows]
    ratios = {r["model"]: r for r in bench_report.ratios(current, baseline)}
    assert ratios["wide-nobatch"]["p50_ms"] is None  # the baseline cell is invalid
    assert ratios["wide"]["p99_ms"] is None  # its p99 is 0: no ratio, no crash
