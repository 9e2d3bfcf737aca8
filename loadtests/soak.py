"""Does resident memory stay flat under steady load? A soak: one server, one long wrk run.

The server (`inscale serve` on the bundled models) is pinned to `--server-cpu`, wrk to
`--client-cpu` with `--connections` keep-alive connections POSTing one real row to /predict
for `--duration-s`. Every `--sample-s` the server's resident memory is read from
/proc/PID/status (nothing inside the server is asked, so measuring changes nothing) together
with the requests it answered meanwhile (its own counters), which proves the load really ran.

The first `--from-s` seconds (default: 2 minutes) are warm-up: allocators, ONNX Runtime's
arena and Python's object pools grow to the working set of the load and then stop. From there
to the end it reports the drift (last sample against the first, in percent) and the slope of
a least-squares line through every sample (MB/min and, against the server's count of
answers, bytes per request), and exits 1 when the drift is over `--max-drift-pct` (or the
slope over `--max-slope-mb-per-min`, or the bytes per request over
`--max-bytes-per-request`, when given), or when any request failed. A measurement, not a speed
figure: other work on the machine moves the request rate, not the memory a request leaves
behind.

    .venv/bin/python -m loadtests.soak                          # 30 min, 32 connections
    .venv/bin/python -m loadtests.soak --duration-s 600 --out results/soak-10min.json
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtests.harness import machine, memory, wrk
from loadtests.harness.processes import ROOT, Started
from loadtests.harness.results import write_results
from loadtests.harness.server import CURRENT, Source, check_source, inscale_server

SAMPLE = ROOT / "service" / "inscale" / "bundled_models" / "sample_input.json"
Row = dict[str, Any]


def answered(server: Started, model: str) -> int | None:
    """Requests the model has answered successfully so far (its `/models/NAME` counters);
    None when the answer has another shape (the tool still measures memory)."""
    try:
        versions = httpx.get(f"{server.url}/models/{model}", timeout=10).json()["versions"]
        return sum(int(v["stats"]["succeeded"]) for v in versions if "stats" in v)
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return None


class Load:
    """One wrk run for the whole soak, started here so that it is stopped with the soak
    (a plain `wrk.run` in a thread would outlive an interrupted soak, hammering a dead port)."""

    def __init__(self, url: str, body: Path, args: argparse.Namespace) -> None:
        client = None if args.no_pin else [args.client_cpu]
        self.cmd, env = wrk.command(
            url, body, connections=args.connections, seconds=args.duration_s, cpus=client
        )
        self._proc = subprocess.Popen(
            self.cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def running(self) -> bool:
        return self._proc.poll() is None

    def result(self) -> wrk.WrkReport:
        stdout, stderr = self._proc.communicate()
        return wrk.report(self.cmd, self._proc.returncode, stdout, stderr)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def sample_while(load: Load, server: Started, args: argparse.Namespace) -> list[Row]:
    """A sample every `--sample-s` from the start of the load until wrk ends."""
    samples: list[Row] = []
    start = time.monotonic()
    served_before, at_before = answered(server, args.model), start
    due = start + args.sample_s
    while load.running():
        time.sleep(max(0.0, min(due - time.monotonic(), 1.0)))
        now = time.monotonic()
        if now < due or not load.running():
            continue
        due += args.sample_s
        mem = memory.read(server.pid)
        served = answered(server, args.model)
        rate = None
        if served is not None and served_before is not None:
            rate = (served - served_before) / (now - at_before)
        served_before, at_before = served, now
        row = {"t_s": round(now - start, 1), **mem.as_dict(), "answered": served}
        row["answered_per_s"] = rate
        samples.append(row)
        print(format_row(row), flush=True)
    return samples


HEADER = f"{'t (s)':>7} {'RSS MB':>8} {'anon MB':>8} {'file MB':>8} {'threads':>7} {'req/s':>8}"


def format_row(row: Row) -> str:
    rate = row["answered_per_s"]
    return (
        f"{row['t_s']:7.0f} {row['rss_kb'] / 1024:8.1f} {row['anon_kb'] / 1024:8.1f} "
        f"{row['file_kb'] / 1024:8.1f} {row['threads']:7d} "
        f"{'-' if rate is None else f'{rate:8.0f}':>8}"
    )


def retained_per_request(samples: list[Row], from_s: float) -> float | None:
    """Bytes of resident memory each answered request left behind: the least-squares slope of
    RSS over the server's own count of answers, from `from_s` on. A leak grows with the work
    done, not with the clock, so this reads the same on a machine twice as slow, where a slope
    per minute halves. None when the server's counts were not readable."""
    points = [
        (float(s["answered"]), s["rss_kb"] * 1024.0)
        for s in samples
        if s["t_s"] >= from_s and s["answered"] is not None
    ]
    if len({x for x, _ in points}) < 2:
        return None
    return memory.slope(points)


def verdict(
    trend: memory.Trend,
    per_request: float | None,
    report: wrk.WrkReport,
    args: argparse.Namespace,
) -> list[str]:
    """Why the soak failed; empty when it passed."""
    failures = []
    if trend.drift_pct > args.max_drift_pct:
        failures.append(
            f"resident memory drifted {trend.drift_pct:+.2f}% from {trend.start_s:.0f} s to "
            f"{trend.end_s:.0f} s ({trend.start_mb:.1f} -> {trend.end_mb:.1f} MB), "
            f"over --max-drift-pct {args.max_drift_pct:g}"
        )
    limit = args.max_slope_mb_per_min
    if limit is not None and trend.slope_mb_per_min > limit:
        failures.append(
            f"resident memory rose {trend.slope_mb_per_min:+.3f} MB/min (fitted from "
            f"{trend.start_s:.0f} s), over --max-slope-mb-per-min {limit:g}"
        )
    limit = args.max_bytes_per_request
    if limit is not None and per_request is None:
        failures.append(
            "--max-bytes-per-request needs the server's answered counts (/models/NAME), "
            "which could not be read"
        )
    elif limit is not None and per_request is not None and per_request > limit:
        failures.append(
            f"every answered request left {per_request:.1f} bytes resident (fitted from "
            f"{trend.start_s:.0f} s), over --max-bytes-per-request {limit:g}"
        )
    if report.errors:
        failures.append(f"{report.errors} requests failed ({report.non2xx} non-2xx answers)")
    if report.requests_per_s < args.min_requests_per_s:
        failures.append(
            f"only {report.requests_per_s:.0f} requests/s were served, under "
            f"--min-requests-per-s {args.min_requests_per_s:g}: the load did not really run"
        )
    return failures


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration-s", type=int, default=1800, help="seconds of load (wrk)")
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    parser.add_argument("--sample-s", type=float, default=15, help="seconds between samples")
    parser.add_argument(
        "--from-s", type=float, default=120, help="warm-up: drift and slope start here"
    )
    parser.add_argument("--max-drift-pct", type=float, default=2.0)
    parser.add_argument(
        "--max-slope-mb-per-min", type=float, help="also fail on a fitted slope above this"
    )
    parser.add_argument(
        "--max-bytes-per-request",
        type=float,
        help="also fail when each answered request leaves more resident memory than this",
    )
    parser.add_argument(
        "--min-requests-per-s",
        type=float,
        default=1.0,
        help="fail when wrk served fewer (the load did not run)",
    )
    parser.add_argument("--model", default="digits-wide", help="a bundled model")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="run without taskset")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an extra `inscale serve` flag, e.g. --server-arg=--no-metrics (repeatable)",
    )
    parser.add_argument(
        "--src",
        type=Path,
        help="serve another checkout's source root (holding inscale/ or the old service/ "
        "package) instead of this tree's: is a rise in an older version too?",
    )
    parser.add_argument("--out", type=Path, default=Path("results/soak.json"))
    args = parser.parse_args()
    if args.duration_s < 1 or args.sample_s <= 0 or args.connections < 1:
        parser.error("--duration-s, --sample-s and --connections must be positive")
    if args.from_s + 2 * args.sample_s > args.duration_s:
        parser.error(
            f"--from-s {args.from_s:g} leaves fewer than 2 samples of --sample-s "
            f"{args.sample_s:g} in --duration-s {args.duration_s}"
        )
    return args


def check_tools(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        sys.exit("soak: wrk not found on PATH; install it (apt-get install wrk)")
    if args.no_pin:
        return
    if shutil.which("taskset") is None:
        sys.exit("soak: taskset not found (util-linux); install it or pass --no-pin")
    allowed = os.sched_getaffinity(0)
    if {args.server_cpu, args.client_cpu} - allowed or args.server_cpu == args.client_cpu:
        sys.exit(
            f"soak: --server-cpu/--client-cpu must be two different CPUs of {sorted(allowed)}; "
            "or pass --no-pin"
        )


def main() -> int:
    args = parse_args()
    check_tools(args)
    # A plain `kill` of the soak must still stop the server: turn it into an exception.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    facts = machine.facts()
    source = CURRENT if args.src is None else Source.of(args.src)
    check_source(source)
    row = json.loads(SAMPLE.read_text())["inputs"][0]
    with tempfile.TemporaryDirectory(prefix="inscale-soak-") as tmp:
        body = Path(tmp) / "body.json"
        body.write_text(json.dumps({"model": args.model, "inputs": [row]}))
        cpus = None if args.no_pin else [args.server_cpu]
        log = Path(tmp) / "server.log"
        with inscale_server(log, cpus=cpus, source=source, extra=args.server_arg) as server:
            idle = memory.read(server.pid)
            print(f"server pid {server.pid}, idle before load: {idle.rss_mb:.1f} MB resident")
            print(HEADER, flush=True)
            load = Load(f"{server.url}/predict", body, args)
            try:
                samples = sample_while(load, server, args)
                report = load.result()
            finally:
                load.stop()
            after = memory.read(server.pid)
    points = [(s["t_s"], s["rss_kb"] / 1024) for s in samples]
    trend = memory.trend(points, args.from_s)
    per_request = retained_per_request(samples, args.from_s)
    failures = verdict(trend, per_request, report, args)
    print(
        f"\nwrk: {report.requests} requests ({report.requests_per_s:.0f}/s), {report.errors} "
        f"errors, p50 {report.p50_us / 1e3:.2f} ms, p99 {report.p99_us / 1e3:.2f} ms"
    )
    print(
        f"from {trend.start_s:.0f} s to {trend.end_s:.0f} s: {trend.start_mb:.1f} -> "
        f"{trend.end_mb:.1f} MB, drift {trend.drift_pct:+.2f}% (limit {args.max_drift_pct:g}%), "
        f"fitted slope {trend.slope_mb_per_min:+.3f} MB/min ({trend.fitted_drift_pct:+.2f}% "
        f"over the window); peak {after.peak_kb / 1024:.1f} MB"
    )
    if per_request is not None:
        print(f"resident memory per answered request: {per_request:+.1f} bytes (fitted)")
    for failure in failures:
        print(f"FAIL: {failure}")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_results(
        args.out,
        facts,
        settings=settings,
        source={"root": str(source.root), "package": source.package},
        idle_before=idle.as_dict(),
        after_load=after.as_dict(),
        samples=samples,
        trend=trend.as_dict(),
        retained_bytes_per_request=per_request,
        wrk=report.as_dict(),
        passed=not failures,
        failures=failures,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
