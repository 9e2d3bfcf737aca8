"""What do metrics cost per request? Serve with metrics off and on, alternately, under wrk.

    .venv/bin/python monitoring/bench_overhead.py --rounds 6 --duration 8

Each round starts a server with `INSCALE_METRICS=false`, then one with `true` (the order
alternates between rounds), on a bundled model (`digits` by default: the cheapest, so the
share metrics take is the largest), pinned to `--server-cpu`, and drives it with one wrk
thread pinned to `--client-cpu` at `--connections` connections. It reports requests/s and the
server's CPU time per request (from /proc, which other work on the machine disturbs less than
throughput), and the medians over the rounds. Needs wrk and taskset.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = ROOT / "loadtests" / "wrk_report.lua"
SAMPLE = ROOT / "service" / "inscale" / "bundled_models" / "sample_input.json"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def wrk(args: argparse.Namespace, url: str, body: Path, seconds: int) -> dict[str, float]:
    cmd = ["taskset", "-c", str(args.client_cpu), "wrk", "-t1", f"-c{args.connections}"]
    cmd += [f"-d{seconds}s", "-s", str(WRK_SCRIPT), url + "/predict"]
    env = {**os.environ, "WRK_BODY_FILE": str(body)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    report: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return report


def one_run(args: argparse.Namespace, metrics: bool, port: int, body: Path) -> tuple[float, float]:
    env = {**os.environ, "INSCALE_METRICS": str(metrics).lower()}
    cmd = ["taskset", "-c", str(args.server_cpu), sys.executable, "-m", "inscale", "serve"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not get ready")
            time.sleep(0.1)
        wrk(args, url, body, 2)  # warm-up
        before = cpu_seconds(server.pid)
        report = wrk(args, url, body, args.duration)
        cpu = cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.wait(30)
    if report["errors"]:
        raise RuntimeError(f"wrk saw errors: {report}")
    requests = report["requests"]
    return requests / (report["duration_us"] / 1e6), cpu / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--model", default="digits", help="a bundled model: digits, digits-wide")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--port", type=int, default=8797)
    args = parser.parse_args()
    rows = json.loads(SAMPLE.read_text())["inputs"][:1]
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as body:
        body.write(json.dumps({"model": args.model, "inputs": rows}))
        body.flush()
        for n in range(args.rounds):
            for metrics in (False, True) if n % 2 == 0 else (True, False):
                rps, cpu_us = one_run(args, metrics, args.port, Path(body.name))
                results[metrics].append((rps, cpu_us))
                state = "on " if metrics else "off"
                print(f"round {n + 1} metrics {state}: {rps:7.0f} req/s, {cpu_us:6.1f} µs CPU/req")
    off_rps = statistics.median(r for r, _ in results[False])
    on_rps = statistics.median(r for r, _ in results[True])
    off_cpu = statistics.median(c for _, c in results[False])
    on_cpu = statistics.median(c for _, c in results[True])
    print(f"median off: {off_rps:7.0f} req/s, {off_cpu:6.1f} µs CPU/req")
    print(f"median on:  {on_rps:7.0f} req/s, {on_cpu:6.1f} µs CPU/req")
    share = (on_cpu - off_cpu) / off_cpu * 100
    print(f"metrics cost {on_cpu - off_cpu:+.1f} µs CPU per request ({share:+.1f}%),")
    print(f"throughput {(on_rps / off_rps - 1) * 100:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
