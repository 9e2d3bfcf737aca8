"""Run one headless Locust scenario and keep everything a report needs in RUN_DIR.

Against a server you already run (`--url`), or one this script starts (pinned to
`--server-cpus`, bundled models unless `--model-repository`). Locust runs pinned to
`--client-cpus`, because a Python load generator on the server's cores takes CPU from it.

    .venv/bin/python -m loadtests.run_load runs/ramp --shape ramp --peak-users 64 --seconds 90
    .venv/bin/python -m loadtests.report runs/ramp --p99-target-ms 50

RUN_DIR gets Locust's own files (locust_stats.csv, locust_stats_history.csv,
locust_failures.csv, locust_exceptions.csv, locust_stats.json, locust_report.html),
requests.csv (every request: time, name, response time, users, failure class),
metrics.jsonl (the server's metrics over the same window: scraped from /metrics every
second, or from `--prometheus` afterwards), run.json (settings, timings, CPU used by the
client, the server and other work on the machine) and the logs.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from loadtests import server_metrics
from loadtests.harness import cpu, machine
from loadtests.harness.processes import ROOT, Started, pinned
from loadtests.harness.server import inscale_server

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
USERS = ("PredictUser", "V2JsonUser", "V2BinaryUser")
SHAPES = ("steady", "ramp", "spike", "soak")


def cpus(text: str) -> list[int]:
    return [int(c) for c in text.split(",") if c.strip()]


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    two_cores = (os.cpu_count() or 1) >= 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="where the run's files go")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running server (default: start one here)")
    target.add_argument("--model-repository", type=Path, help="for the server started here")
    parser.add_argument("--server-cpus", type=cpus, default=[0] if two_cores else [])
    parser.add_argument("--client-cpus", type=cpus, default=[1] if two_cores else [])
    parser.add_argument("--shape", choices=SHAPES, default="ramp")
    parser.add_argument("--peak-users", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=90, help="length of the shape")
    parser.add_argument("--ramp-steps", type=int, default=8)
    parser.add_argument("--model", default="digits-wide")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument(
        "--user", action="append", choices=USERS, help="user class (repeatable; default all)"
    )
    parser.add_argument("--processes", type=int, default=0, help="Locust workers (0: one process)")
    parser.add_argument("--prometheus", help="read metrics from this Prometheus afterwards")
    parser.add_argument("--prometheus-selector", default="", help='e.g. job="inscale"')
    parser.add_argument("--metrics-interval", type=float, default=1.0)
    return parser.parse_args(argv)


def locust_command(args: argparse.Namespace, url: str) -> list[str]:
    out = args.run_dir
    cmd = [*pinned(args.client_cpus), sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    cmd += ["--headless", "--only-summary", "-H", url, "--shape", args.shape]
    cmd += ["--peak-users", str(args.peak_users), "--shape-seconds", str(args.seconds)]
    cmd += ["--ramp-steps", str(args.ramp_steps), "--model", args.model, "--rows", str(args.rows)]
    # Locust rewrites its CSVs every second, not at exit, so they can miss the last second;
    # the JSON file is written once all users have stopped.
    cmd += ["--csv", str(out / "locust"), "--csv-full-history"]
    cmd += ["--json-file", str(out / "locust_stats")]  # Locust adds .json
    cmd += ["--html", str(out / "locust_report.html"), "--request-log", str(out / "requests.csv")]
    if args.processes:
        cmd += ["--processes", str(args.processes)]
    return cmd + (args.user or list(USERS))


@contextmanager
def target_server(args: argparse.Namespace) -> Iterator[Started | None]:
    if args.url:
        yield None
        return
    with inscale_server(
        args.run_dir / "server.log", model_repository=args.model_repository, cpus=args.server_cpus
    ) as started:
        yield started


def run_locust(cmd: list[str], log: Path, timeout_s: float) -> dict[str, Any]:
    """Run Locust to the end of its shape; its CPU use says whether it was the bottleneck."""
    usage = cpu.children_cpu_seconds()
    began = time.monotonic()
    with log.open("wb") as sink:
        done = subprocess.run(cmd, stdout=sink, stderr=sink, cwd=ROOT, timeout=timeout_s)
    wall = time.monotonic() - began
    used = cpu.children_cpu_seconds() - usage
    # Exit code 1 only says some requests failed, which an overload test wants to see.
    if done.returncode not in (0, 1) or not (log.parent / "locust_stats.csv").exists():
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"locust failed ({shlex.join(cmd)}), exit {done.returncode}:\n{tail}")
    return {"exit_code": done.returncode, "wall_s": wall, "cpu_s": used, "cores": used / wall}


def run(args: argparse.Namespace) -> dict[str, Any]:
    args.run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = args.run_dir / "metrics.jsonl"
    info: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine.facts(),
        "shape": args.shape,
        "peak_users": args.peak_users,
        "seconds": args.seconds,
        "ramp_steps": args.ramp_steps,
        "model": args.model,
        "rows": args.rows,
        "users": args.user or list(USERS),
        "client_cpus": args.client_cpus,
    }
    with target_server(args) as started:
        url = args.url or (started.url if started else "")
        info |= {"url": url, "server_started_here": started is not None}
        if started is not None:
            info["server_cpus"] = args.server_cpus
            server_cpu_before = cpu.process_cpu_seconds(started.pid)
        sampler = (
            server_metrics.sampling(url, metrics_path, args.metrics_interval)
            if args.prometheus is None
            else nullcontext()
        )
        info["start"], busy_before = time.time(), sum(cpu.core_times([]).busy_s.values())
        with sampler:
            cmd = locust_command(args, url)
            info["locust_command"] = shlex.join(cmd)
            info["client"] = run_locust(cmd, args.run_dir / "locust.log", args.seconds + 300)
        info["end"] = time.time()
        busy = sum(cpu.core_times([]).busy_s.values()) - busy_before
        wall, ours = info["end"] - info["start"], info["client"]["cpu_s"]
        if started is not None:
            server_s = cpu.process_cpu_seconds(started.pid) - server_cpu_before
            info["server"] = {"cpu_s": server_s, "cores": server_s / wall}
            ours += server_s
            # Other work on the machine meanwhile (only known when the server is ours).
            info["other_cores"] = max(0.0, busy - ours) / wall
    if args.prometheus:
        instants = server_metrics.from_prometheus(
            args.prometheus, info["start"], info["end"], metrics_path, args.prometheus_selector
        )
        info["metrics_source"] = f"prometheus {args.prometheus} ({instants} instants)"
    else:
        info["metrics_source"] = f"{url}/metrics every {args.metrics_interval:g}s"
    (args.run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    args = arguments()
    info = run(args)
    client = info["client"]
    print(
        f"{args.run_dir}: Locust exit {client['exit_code']}, used {client['cores']:.2f} cores; "
        f"report: {sys.executable} -m loadtests.report {args.run_dir}"
    )


if __name__ == "__main__":
    main()
