"""This tree against another checkout on one cell, in many short interleaved rounds.

`bench_batching --baseline-src` measures a whole table once per side; on a machine whose speed
drifts by tens of percent within a minute, one cell is then one sample. This measures one model
at one concurrency, both servers pinned to the same core and wrk to another, in `--rounds`
alternating turns (the order flips each round), and reports the median of the per-round ratios
current / baseline, which drift hits on both sides alike. Short turns keep the two sides of a
round close in time: on these machines 6 rounds of 4 s read wide at concurrency 1 at 0.89x
where 16 rounds of 2 s read 1.12x, against the same baseline within the hour.

    .venv/bin/python -m loadtests.bench_ab --baseline-src ../old/service --model identity -c 32
"""

import argparse
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from loadtests.bench_models import build_repository, one_row_bodies
from loadtests.harness import machine, wrk
from loadtests.harness.processes import ROOT
from loadtests.harness.results import write_results
from loadtests.harness.server import CURRENT, Source, check_source, inscale_server


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-src", type=Path, required=True, help="its service/ folder")
    parser.add_argument("--model", default="identity", choices=("identity", "wide"))
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--duration", type=int, default=2, help="seconds per turn")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "ab.json")
    args = parser.parse_args()
    sources = {"current": CURRENT, "baseline": Source.of(args.baseline_src)}
    for source in sources.values():
        check_source(source)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="inscale-ab-") as tmp:
        work = Path(tmp)
        repo = work / "models"
        build_repository(repo, [args.model], 1)
        body = one_row_bodies(work, [args.model])[args.model]
        client = [args.client_cpu]
        with ExitStack() as stack:
            urls = {
                name: stack.enter_context(
                    inscale_server(
                        work / f"{name}.log",
                        model_repository=repo,
                        cpus=[args.server_cpu],
                        source=source,
                    )
                ).url
                + "/predict"
                for name, source in sources.items()
            }
            for url in urls.values():
                wrk.run(url, body, connections=args.connections, seconds=2, cpus=client)
            for turn in range(args.rounds):
                names = list(urls) if turn % 2 == 0 else list(urls)[::-1]
                for name in names:
                    report = wrk.run(
                        urls[name],
                        body,
                        connections=args.connections,
                        seconds=args.duration,
                        cpus=client,
                    )
                    rows.append(
                        {"side": name, "round": turn, "requests_per_s": report.requests_per_s}
                        | report.as_dict()
                    )
                    print(
                        f"round {turn} {name:8} {report.requests_per_s:8.0f} req/s  "
                        f"p50 {report.p50_us / 1000:6.2f} ms  p99 {report.p99_us / 1000:6.2f} ms"
                        f"  errors {report.errors}",
                        flush=True,
                    )
    ratios: dict[str, list[float]] = {"requests_per_s": [], "p50_us": [], "p99_us": []}
    for turn in range(args.rounds):
        pair = {r["side"]: r for r in rows if r["round"] == turn}
        for key, values in ratios.items():
            values.append(pair["current"][key] / max(pair["baseline"][key], 1e-9))
    medians = {key: statistics.median(values) for key, values in ratios.items()}
    print(
        f"\n{args.model} at {args.connections} connections, current / baseline, median of "
        f"{args.rounds} rounds: req/s {medians['requests_per_s']:.3f}, "
        f"p50 {medians['p50_us']:.3f}, p99 {medians['p99_us']:.3f} "
        f"(per round req/s: {', '.join(f'{r:.2f}' for r in ratios['requests_per_s'])})"
    )
    write_results(
        args.out,
        machine.facts(),
        model=args.model,
        connections=args.connections,
        baseline=str(args.baseline_src),
        rows=rows,
        median_ratios=medians,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
