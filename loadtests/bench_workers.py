"""How does `inscale serve --workers N` scale on the cores it is given? N = 1, 2, ... interleaved.

One server per worker count, all started up front on the same cores (`--cpus`, default every
core of this machine), each idle while another is measured; wrk (one thread, so it stays a
small share of the cores) on the same cores. Each round measures every worker count once, in
an order that rotates between rounds, at `--connections` for each model. It prints req/s and
p99 per cell, the median of each count's req/s over the one-worker figure, and the server
processes' CPU (what the workers actually used), and writes JSON. The HTTP request counter is
read back from `/metrics` after every cell and must match what wrk saw answered (plus at most
the one request per connection still in flight when wrk stopped), so the multi-process
metrics are checked under the same load.

    .venv/bin/python -m loadtests.bench_workers --workers 1,2 --rounds 4
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench_models import build_repository, one_row_bodies
from loadtests.harness import cpu, machine, wrk
from loadtests.harness.processes import ROOT, Started
from loadtests.harness.results import write_results
from loadtests.harness.server import inscale_server

_REQUESTS = re.compile(
    r'^inscale_http_requests_total\{[^}]*method="POST"[^}]*route="/predict"[^}]*\} (\S+)', re.M
)


def answered(server: Started) -> float:
    """Every POST /predict the server's metrics have counted, over all statuses and workers."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(float(v) for v in _REQUESTS.findall(text))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--models", default="identity,wide")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--cpus", default=None, help="cores for servers and wrk, e.g. 0,1")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "workers.json")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    cores = [int(c) for c in args.cpus.split(",")] if args.cpus else sorted(os.sched_getaffinity(0))
    models = args.models.split(",")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="inscale-workers-") as tmp:
        work = Path(tmp)
        repo = work / "models"
        build_repository(repo, models, 1)
        bodies = one_row_bodies(work, models)
        with ExitStack() as stack:
            servers = {
                n: stack.enter_context(
                    inscale_server(
                        work / f"workers{n}.log",
                        model_repository=repo,
                        cpus=cores,
                        extra=["--workers", str(n)],
                    )
                )
                for n in counts
            }
            for server in servers.values():  # every worker warmed: new connections spread
                for body in bodies.values():
                    wrk.run(f"{server.url}/predict", body, connections=64, seconds=2, cpus=cores)
            for turn in range(args.rounds):
                order = counts[turn % len(counts) :] + counts[: turn % len(counts)]
                for model, body in bodies.items():
                    for n in order:
                        server = servers[n]
                        before = answered(server)
                        cpu_before = cpu.tree_cpu_seconds(server.pid)
                        report = wrk.run(
                            f"{server.url}/predict",
                            body,
                            connections=args.connections,
                            seconds=args.duration,
                            cpus=cores,
                        )
                        used = (cpu.tree_cpu_seconds(server.pid) - cpu_before) / (
                            report.duration_us / 1e6
                        )
                        counted = answered(server) - before
                        rows.append(
                            {"workers": n, "model": model, "round": turn, "server_cores": used}
                            | report.as_dict()
                            | {"requests_per_s": report.requests_per_s, "counted": counted}
                        )
                        print(
                            f"{model:9} workers={n} {report.requests_per_s:8.0f} req/s  "
                            f"p99 {report.p99_us / 1000:6.2f} ms  server cores {used:4.2f}  "
                            f"answered {report.requests} counted {counted:.0f}",
                            flush=True,
                        )
    print()
    print(f"req/s against one worker, median over {args.rounds} rounds, on cores {cores}")
    summary = []
    for model in models:
        base = statistics.median(
            r["requests_per_s"] for r in rows if r["model"] == model and r["workers"] == counts[0]
        )
        for n in counts:
            mine = [r for r in rows if r["model"] == model and r["workers"] == n]
            rate = statistics.median(r["requests_per_s"] for r in mine)
            # wrk counts the answers that came within its time; the server also answered the
            # requests in flight when wrk stopped, one per connection at most.
            exact = all(
                r["requests"] <= r["counted"] <= r["requests"] + args.connections for r in mine
            )
            summary.append(
                {"model": model, "workers": n, "requests_per_s": rate, "scaling": rate / base}
            )
            print(
                f"{model:9} workers={n}  {rate:8.0f} req/s  x{rate / base:4.2f}  "
                f"metrics {'exact' if exact else 'OFF'}"
            )
    write_results(args.out, machine.facts(), cores=cores, rows=rows, summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
