"""Does `inscale profile`'s own load generator measure what wrk measures?

One server pinned to `--server-core`, and each client pinned to `--load-core` in turn: wrk
(one thread) and the profile's closed-loop generator (`inscale.profile.load`), in alternating
rounds of the same length at the same concurrency on the same `/predict` body. Each round
prints throughput, p50 and p99 from both, and the client's own CPU per request (what it takes
from the machine). The verdict is the median ratio generator / wrk: near 1.0 means the
profile's figures are wrk's figures.

    .venv/bin/python -m loadtests.bench_profile_load --model wide -c 1,32 --rounds 6
"""

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from inscale.profile.load import http_request, new_event_loop, run_load
from loadtests.bench_models import build_repository, one_row_bodies
from loadtests.harness import machine, wrk
from loadtests.harness.results import write_results
from loadtests.harness.server import inscale_server

OUT = Path(__file__).resolve().parent / "results" / "profile_load.json"


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wrk_turn(url: str, body: Path, concurrency: int, seconds: int, core: int) -> dict[str, Any]:
    before = _children_cpu_s()
    report = wrk.run(f"{url}/predict", body, connections=concurrency, seconds=seconds, cpus=[core])
    cpu = _children_cpu_s() - before
    ok = report.requests - report.errors
    return {
        "rps": report.ok_per_s,
        "p50_ms": report.p50_us / 1000,
        "p99_ms": report.p99_us / 1000,
        "errors": report.errors,
        "client_cpu_us": cpu / max(ok, 1) * 1e6,
    }


def _generator_turn(url: str, body: bytes, concurrency: int, seconds: int) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    request = http_request(host, int(port), "/predict", body, "application/json", {})
    loop = new_event_loop()
    try:
        before = time.process_time()
        result = loop.run_until_complete(
            run_load(host, int(port), request, concurrency, 0.0, float(seconds))
        )
        cpu = time.process_time() - before
    finally:
        loop.close()
    return {
        "rps": result.rps,
        "p50_ms": result.percentile(50),
        "p99_ms": result.percentile(99),
        "errors": result.errors,
        "client_cpu_us": cpu / max(result.requests, 1) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wide", choices=["wide", "identity"])
    parser.add_argument("-c", "--concurrency", default="1,32")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    own = os.sched_getaffinity(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        build_repository(folder / "repo", [args.model])
        body_file = one_row_bodies(folder, [args.model])[args.model]
        body = body_file.read_bytes()
        log = folder / "server.log"
        with inscale_server(log, model_repository=folder / "repo", cpus=[args.server_core]) as up:
            os.sched_setaffinity(0, [args.load_core])
            try:
                for concurrency in levels:
                    for turn in range(args.rounds):
                        order = ["wrk", "generator"] if turn % 2 == 0 else ["generator", "wrk"]
                        got: dict[str, dict[str, Any]] = {}
                        for client in order:
                            got[client] = (
                                _wrk_turn(up.url, body_file, concurrency, args.seconds,
                                          args.load_core)
                                if client == "wrk"
                                else _generator_turn(up.url, body, concurrency, args.seconds)
                            )  # fmt: skip
                        row = {"concurrency": concurrency, "round": turn + 1, **_flat(got)}
                        rows.append(row)
                        print(_line(row), flush=True)
            finally:
                os.sched_setaffinity(0, own)
    summary = _summary(rows, levels)
    print()
    print(_table(summary))
    write_results(args.out, machine.facts(), model=args.model, rounds=rows, summary=summary)
    print(f"\nwrote {args.out}")


def _flat(got: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        f"{client}_{key}": value
        for client, figures in got.items()
        for key, value in figures.items()
    }


def _line(row: dict[str, Any]) -> str:
    return (
        f"c={row['concurrency']:<3} round {row['round']}: "
        f"wrk {row['wrk_rps']:8.0f} req/s p50 {row['wrk_p50_ms']:.2f} p99 {row['wrk_p99_ms']:.2f} "
        f"| generator {row['generator_rps']:8.0f} req/s p50 {row['generator_p50_ms']:.2f} "
        f"p99 {row['generator_p99_ms']:.2f}"
    )


def _summary(rows: list[dict[str, Any]], levels: list[int]) -> list[dict[str, Any]]:
    out = []
    for concurrency in levels:
        mine = [r for r in rows if r["concurrency"] == concurrency]

        def median(key: str, rounds: list[dict[str, Any]] = mine) -> float:
            return float(statistics.median(r[key] for r in rounds))

        def ratio(key: str, rounds: list[dict[str, Any]] = mine) -> float:
            return float(statistics.median(r[f"generator_{key}"] / r[f"wrk_{key}"] for r in rounds))

        out.append(
            {
                "concurrency": concurrency,
                "wrk_rps": median("wrk_rps"),
                "generator_rps": median("generator_rps"),
                "rps_ratio": ratio("rps"),
                "p50_ratio": ratio("p50_ms"),
                "p99_ratio": ratio("p99_ms"),
                "wrk_client_cpu_us": median("wrk_client_cpu_us"),
                "generator_client_cpu_us": median("generator_client_cpu_us"),
            }
        )
    return out


def _table(summary: list[dict[str, Any]]) -> str:
    head = (
        "| concurrency | wrk req/s | generator req/s | req/s ratio | p50 ratio | p99 ratio "
        "| client CPU µs/req: wrk | generator |"
    )
    lines = [head, "|" + "---|" * 8]
    for s in summary:
        lines.append(
            f"| {s['concurrency']} | {s['wrk_rps']:,.0f} | {s['generator_rps']:,.0f} | "
            f"{s['rps_ratio']:.3f} | {s['p50_ratio']:.3f} | {s['p99_ratio']:.3f} | "
            f"{s['wrk_client_cpu_us']:.1f} | {s['generator_client_cpu_us']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
