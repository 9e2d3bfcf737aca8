"""What do metrics cost per request? Serve with metrics off and on, alternately, under wrk.

    .venv/bin/python -m loadtests.bench_overhead --rounds 6 --duration 8

Each round starts a server with `INSCALE_METRICS=false`, then one with `true` (the order
alternates between rounds), on a bundled model (`digits` by default: the cheapest, so the
share metrics take is the largest), pinned to `--server-cpu`, and drives it with one wrk
thread pinned to `--client-cpu` at `--connections` connections. It reports requests/s and the
server's CPU time per request (from /proc, which other work on the machine disturbs less than
throughput), and the medians over the rounds. Needs wrk and taskset.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from loadtests.harness import cpu, wrk
from loadtests.harness.processes import ROOT
from loadtests.harness.server import inscale_server

SAMPLE = ROOT / "service" / "inscale" / "bundled_models" / "sample_input.json"


def one_run(
    args: argparse.Namespace, metrics: bool, body: Path, workdir: Path
) -> tuple[float, float]:
    """Requests/s and the server's CPU microseconds per request, one fresh server."""
    env = {"INSCALE_METRICS": str(metrics).lower()}
    log = workdir / f"server-{metrics}.log"
    client = [args.client_cpu]
    with inscale_server(log, cpus=[args.server_cpu], env=env) as server:
        url = f"{server.url}/predict"
        wrk.run(url, body, connections=args.connections, seconds=2, cpus=client)  # warm-up
        before = cpu.process_cpu_seconds(server.pid)
        report = wrk.run(
            url, body, connections=args.connections, seconds=args.duration, cpus=client
        )
        used = cpu.process_cpu_seconds(server.pid) - before
    if report.errors or not report.requests:
        raise RuntimeError(f"wrk saw errors or no answer: {report}")
    return report.requests_per_s, used / report.requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=8, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--model", default="digits", help="a bundled model: digits, digits-wide")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    args = parser.parse_args()
    rows = json.loads(SAMPLE.read_text())["inputs"][:1]
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="inscale-overhead-") as tmp:
        body = Path(tmp) / "body.json"
        body.write_text(json.dumps({"model": args.model, "inputs": rows}))
        for n in range(args.rounds):
            for metrics in (False, True) if n % 2 == 0 else (True, False):
                rps, cpu_us = one_run(args, metrics, body, Path(tmp))
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
