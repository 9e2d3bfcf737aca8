"""Which HTTP server runs inscale fastest? The same app under uvicorn and granian, interleaved.

Both servers load the app from the same factory (`inscale.app:create_app_from_env`, settings
from the same `INSCALE_*` environment) on `--server-cpu`, one process each; wrk drives them
from `--client-cpu` in alternating turns (the order flips every round, so drifting load on a
shared machine hits both alike). uvicorn is started as `inscale serve` starts it (our
protocol class: read timeouts, caps, answers written whole); granian with its ASGI interface
and uvloop, which has none of those (its own backpressure option aside). Prints req/s and p50
and p99 per server and cell, the medians of granian / uvicorn over the rounds, and writes JSON.

    .venv/bin/python -m loadtests.bench_servers --rounds 4 --duration 5

Needs granian (`pip install granian`: not a dependency of inscale), wrk and taskset.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from loadtests.bench_models import build_repository, one_row_bodies
from loadtests.harness import machine, wrk
from loadtests.harness.processes import ROOT, Started, free_port, pinned, spawned, wait_http_ok
from loadtests.harness.results import write_results
from loadtests.harness.server import CURRENT, inscale_server

SERVERS = ("uvicorn", "granian")


@contextmanager
def granian_server(log: Path, repo: Path, cpu: int, options: list[str]) -> Iterator[Started]:
    port = free_port()
    granian = Path(sys.executable).parent / "granian"
    cmd = [*pinned([cpu]), str(granian), "--interface", "asgi", "--factory", "--loop", "uvloop"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-ws"]
    cmd += ["--log-level", "warning", *options, "inscale.app:create_app_from_env"]
    env = CURRENT.env({"INSCALE_MODEL_REPOSITORY": str(repo), "INSCALE_LOG_LEVEL": "warning"})
    with spawned(cmd, log, cwd=log.parent, env=env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health/ready", 120, proc)
        yield Started(url, proc.pid, log)


def run_cells(
    started: dict[str, Started],
    bodies: dict[str, Path],
    levels: list[int],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for model, body in bodies.items():
        for conc in levels:
            for turn in range(args.rounds):
                for name in SERVERS if turn % 2 == 0 else SERVERS[::-1]:
                    report = wrk.run(
                        f"{started[name].url}/predict",
                        body,
                        connections=conc,
                        seconds=args.duration,
                        cpus=[args.client_cpu],
                    )
                    cell = {"server": name, "model": model, "concurrency": conc, "round": turn}
                    rows.append(cell | report.as_dict() | {"requests_per_s": report.requests_per_s})
                    print(
                        f"{model:9} c={conc:<3} {name:8} {report.requests_per_s:8.0f} req/s  "
                        f"p50 {report.p50_us / 1000:6.2f} ms  p99 {report.p99_us / 1000:6.2f} ms  "
                        f"errors {report.errors}",
                        flush=True,
                    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="identity,wide")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument(
        "--granian-option",
        action="append",
        default=[],
        help="passed to granian, e.g. --granian-option=--runtime-mode=st (repeatable)",
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "servers.json")
    args = parser.parse_args()
    if not (Path(sys.executable).parent / "granian").exists():
        parser.error("granian is not installed in this environment (pip install granian)")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (scripts/dev setup installs it)")
    models = args.models.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="inscale-servers-") as tmp:
        work = Path(tmp)
        repo = work / "models"
        build_repository(repo, models, 1)
        bodies = one_row_bodies(work, models)
        with ExitStack() as stack:
            started = {
                "uvicorn": stack.enter_context(
                    inscale_server(
                        work / "uvicorn.log", model_repository=repo, cpus=[args.server_cpu]
                    )
                ),
                "granian": stack.enter_context(
                    granian_server(work / "granian.log", repo, args.server_cpu, args.granian_option)
                ),
            }
            client = [args.client_cpu]
            for server in started.values():  # warm both: first runs, JIT-free but cache-cold
                for model in models:
                    wrk.run(
                        f"{server.url}/predict",
                        bodies[model],
                        connections=32,
                        seconds=2,
                        cpus=client,
                    )
            rows = run_cells(started, bodies, levels, args)
    print()
    print("granian / uvicorn, median over the rounds (req/s: higher is better)")
    print(f"{'model':9} {'conc':>4} {'req/s':>7} {'p50':>7} {'p99':>7}")
    summary = []
    for model in models:
        for conc in levels:
            ratios: dict[str, list[float]] = {"requests_per_s": [], "p50_us": [], "p99_us": []}
            for turn in range(args.rounds):
                pair = {
                    r["server"]: r
                    for r in rows
                    if r["model"] == model and r["concurrency"] == conc and r["round"] == turn
                }
                for key, values in ratios.items():
                    values.append(pair["granian"][key] / max(pair["uvicorn"][key], 1e-9))
            medians = {k: statistics.median(v) for k, v in ratios.items()}
            summary.append({"model": model, "concurrency": conc, **medians})
            print(
                f"{model:9} {conc:>4} {medians['requests_per_s']:7.3f} {medians['p50_us']:7.3f} "
                f"{medians['p99_us']:7.3f}"
            )
    write_results(args.out, machine.facts(), rows=rows, granian_over_uvicorn=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
