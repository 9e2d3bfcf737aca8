"""Does dynamic batching pay? wide (batching on) vs wide-nobatch vs identity (HTTP-only ceiling).

One server pinned to one core, wrk pinned to another, one real row per request, and raw ONNX
Runtime on the server's core as the compute floor. Prints tables and the issue's three targets,
and writes every figure to JSON. A benchmark, not a test: numbers depend on the machine.

    .venv/bin/python loadtests/bench_batching.py --duration 10 --concurrency 1,8,32,64
"""

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from bench_models import WIDE_ONNX, build_repository

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLE = ROOT / "service" / "bundled_models" / "sample_input.json"
WRK_SCRIPT = HERE / "wrk_report.lua"
MODELS = ("wide", "wide-nobatch", "identity")
RAW_BATCH_SIZES = (1, 8, 32, 64)
TARGET_CONCURRENCY = 32  # the targets are stated at this concurrency (and at 1)
Row = dict[str, Any]


def pin(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)]


def wait_for_port(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> int:
    """The server picks a free port (--port 0) and only says which in its startup log line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"server did not start; its log ({log}) ends:\n{log.read_text()[-2000:]}")


def wait_until_ready(base_url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"models not ready after {timeout_s:.0f}s")


@contextmanager
def running_server(repo: Path, prefix: list[str], log: Path) -> Iterator[str]:
    cmd = [*prefix, sys.executable, "-m", "service", "serve", "--model-repository", str(repo)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--log-level", "info", "--log-format", "json"]
    with log.open("wb") as sink:
        # Own session: a Ctrl-C on the terminal reaches only us, and we stop the server in order.
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=sink, start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{wait_for_port(proc, log)}"
        wait_until_ready(base_url)
        yield base_url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_wrk(prefix: list[str], url: str, body: Path, connections: int, seconds: int) -> Row:
    cmd = [*prefix, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    cmd += ["-s", str(WRK_SCRIPT), url]
    env = {**os.environ, "WRK_BODY_FILE": str(body)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({shlex.join(cmd)}):\n{done.stdout}\n{done.stderr}")
    report: Row = json.loads(lines[-1])
    return report


def model_counters(base_url: str, model: str) -> Row:
    versions = httpx.get(f"{base_url}/models/{model}", timeout=10).json()["versions"]
    stats: Row = next(v["stats"] for v in versions if "stats" in v)
    return stats


def measure(
    base_url: str, prefix: list[str], model: str, body: Path, conc: int, args: argparse.Namespace
) -> Row:
    """One warm-up run (fills queues, wakes threads), then the measured run between counters."""
    url = f"{base_url}/predict"
    if args.warmup:
        run_wrk(prefix, url, body, conc, args.warmup)
    before = model_counters(base_url, model)
    report = run_wrk(prefix, url, body, conc, args.duration)
    after = model_counters(base_url, model)
    runs, rows = after["runs"] - before["runs"], after["rows"] - before["rows"]
    return {
        "model": model,
        "concurrency": conc,
        "requests_per_s": report["requests"] / (report["duration_us"] / 1e6),
        "p50_ms": report["p50_us"] / 1e3,
        "p90_ms": report["p90_us"] / 1e3,
        "p99_ms": report["p99_us"] / 1e3,
        "errors": report["errors"],
        "runs": runs,
        "rows": rows,
        "mean_rows_per_run": rows / runs if runs else None,
        "wrk": report,
    }


def raw_ort(prefix: list[str]) -> Row:
    sizes = ",".join(map(str, RAW_BATCH_SIZES))
    cmd = [*prefix, sys.executable, str(HERE / "bench_models.py"), str(WIDE_ONNX)]
    cmd += ["--sample", str(SAMPLE), "--batch-sizes", sizes]
    result: Row = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return result


def find(rows: list[Row], model: str, conc: int) -> Row | None:
    return next((r for r in rows if r["model"] == model and r["concurrency"] == conc), None)


def target_throughput(rows: list[Row]) -> Row:
    c = TARGET_CONCURRENCY
    on, off = find(rows, "wide", c), find(rows, "wide-nobatch", c)
    name = f"c={c}: wide req/s >= 4x wide-nobatch, and lower p99"
    if on is None or off is None:
        return {"target": name, "passed": None, "detail": "needs wide and wide-nobatch at c=32"}
    ratio = on["requests_per_s"] / off["requests_per_s"]
    detail = (
        f"{on['requests_per_s']:.0f} vs {off['requests_per_s']:.0f} req/s = {ratio:.2f}x; "
        f"p99 {on['p99_ms']:.2f} vs {off['p99_ms']:.2f} ms"
    )
    passed = ratio >= 4 and on["p99_ms"] < off["p99_ms"]
    return {"target": name, "passed": passed, "ratio": ratio, "detail": detail}


def target_idle_latency(rows: list[Row]) -> Row:
    on, off = find(rows, "wide", 1), find(rows, "wide-nobatch", 1)
    name = "c=1: wide p50 within 10% of wide-nobatch p50"
    if on is None or off is None:
        return {"target": name, "passed": None, "detail": "needs wide and wide-nobatch at c=1"}
    ratio = on["p50_ms"] / off["p50_ms"]
    # One-sided: the risk is batching holding a lone request back; being faster is no failure.
    detail = f"p50 {on['p50_ms']:.3f} vs {off['p50_ms']:.3f} ms = {ratio:.3f}x"
    return {"target": name, "passed": ratio <= 1.10, "ratio": ratio, "detail": detail}


def target_ceiling(rows: list[Row], raw: Row) -> Row:
    c = TARGET_CONCURRENCY
    on, http = find(rows, "wide", c), find(rows, "identity", c)
    raw_c = next((b for b in raw["batches"] if b["batch_size"] == c), None)
    name = f"c={c}: wide req/s >= 85% of 1/(HTTP-only per request + raw compute per row)"
    if on is None or http is None or raw_c is None:
        return {"target": name, "passed": None, "detail": "needs wide and identity at c=32"}
    http_us = 1e6 / http["requests_per_s"]
    limit = 1e6 / (http_us + raw_c["us_per_row"])
    share = on["requests_per_s"] / limit
    detail = (
        f"{on['requests_per_s']:.0f} req/s vs limit {limit:.0f} (HTTP {http_us:.0f} us/req"
        f" + ORT {raw_c['us_per_row']:.1f} us/row) = {share:.0%}"
    )
    return {"target": name, "passed": share >= 0.85, "share": share, "detail": detail}


def print_tables(rows: list[Row], raw: Row, targets: list[Row]) -> None:
    print(
        f"\n{'model':<14}{'conc':>5}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'rows/run':>10}{'errors':>8}"
    )
    for r in rows:
        per_run = "-" if r["mean_rows_per_run"] is None else f"{r['mean_rows_per_run']:.2f}"
        print(
            f"{r['model']:<14}{r['concurrency']:>5}{r['requests_per_s']:>10.0f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{per_run:>10}{r['errors']:>8}"
        )
    print(f"\nraw ONNX Runtime {raw['onnxruntime']}, digits-wide, server core")
    print(f"{'batch':>6}{'median ms':>11}{'us/row':>9}")
    for b in raw["batches"]:
        print(f"{b['batch_size']:>6}{b['median_ms']:>11.3f}{b['us_per_row']:>9.1f}")
    print("\ntargets (this run, side by side)")
    for t in targets:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[t["passed"]]
        print(f"  {verdict}  {t['target']}\n        {t['detail']}")
    if any(r["errors"] for r in rows):
        print("\nwarning: some runs had errors; their figures are suspect (see the JSON)")


def machine_info() -> Row:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu.group(1) if cpu else platform.processor(),
        # Other work on the box skews everything; the load average at start shows if there was.
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": wrk_version.splitlines()[0] if wrk_version else None,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="subset of " + ",".join(MODELS))
    parser.add_argument("--concurrency", default="1,8,32,64", help="wrk connections, per model")
    # wrk takes whole seconds only.
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="run without taskset")
    parser.add_argument("--out", type=Path, default=Path("results/bench_batching.json"))
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if args.duration < 1 or args.warmup < 0:
        parser.error("--duration must be at least 1 and --warmup at least 0 (seconds)")
    if unknown := set(args.models) - set(MODELS):
        parser.error(f"unknown models {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return args


def check_tools(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench_batching: wrk not found on PATH; install it (apt-get install wrk)")
    if args.no_pin:
        return
    if shutil.which("taskset") is None:
        sys.exit("bench_batching: taskset not found (util-linux); install it or pass --no-pin")
    allowed = os.sched_getaffinity(0)
    if {args.server_cpu, args.client_cpu} - allowed or args.server_cpu == args.client_cpu:
        sys.exit(
            f"bench_batching: --server-cpu/--client-cpu must be two different CPUs of "
            f"{sorted(allowed)}; or pass --no-pin"
        )


def run_http(args: argparse.Namespace, server_pin: list[str], client_pin: list[str]) -> list[Row]:
    first_row = json.loads(SAMPLE.read_text())["inputs"][0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="inscale-bench-") as tmp:
        repo, log = Path(tmp) / "models", Path(tmp) / "server.log"
        build_repository(repo, args.models)
        bodies = {m: Path(tmp) / f"{m}.json" for m in args.models}
        for model, body in bodies.items():
            body.write_text(json.dumps({"model": model, "inputs": [first_row]}))
        with running_server(repo, server_pin, log) as base_url:
            # Models compared at one concurrency run back to back, so drifting background load
            # on a shared machine hits both sides of a comparison alike.
            for conc in args.concurrency:
                for model, body in bodies.items():
                    print(f"  {model} c={conc} ...", flush=True)
                    rows.append(measure(base_url, client_pin, model, body, conc, args))
    return sorted(rows, key=lambda r: (args.models.index(r["model"]), r["concurrency"]))


def main() -> int:
    args = parse_args()
    check_tools(args)
    # A plain `kill` of the benchmark must still stop the server: turn it into an exception.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server_pin = [] if args.no_pin else pin(args.server_cpu)
    client_pin = [] if args.no_pin else pin(args.client_cpu)
    machine = machine_info()  # before we add load of our own
    print("raw ONNX Runtime on the server core...", flush=True)
    raw = raw_ort(server_pin)  # before the server starts, so nothing shares its core
    rows = run_http(args, server_pin, client_pin)
    targets = [target_throughput(rows), target_idle_latency(rows), target_ceiling(rows, raw)]
    print_tables(rows, raw, targets)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    document = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine, "onnxruntime": raw["onnxruntime"]},
        "settings": settings,
        "raw_ort": raw,
        "http": rows,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
