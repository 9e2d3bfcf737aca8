"""This tree against another checkout on one cell, in many short interleaved rounds.

`bench_batching --baseline-src` measures a whole table once per side; on a machine whose speed
drifts by tens of percent within a minute, one cell is then one sample. This measures one model
at one concurrency, both servers pinned to the same core and wrk to another, in `--rounds`
alternating turns (the order flips each round), and reports the median of the per-round ratios
current / baseline, which drift hits on both sides alike. Short turns keep the two sides of a
round close in time: on these machines 6 rounds of 4 s read wide at concurrency 1 at 0.89x
where 16 rounds of 2 s read 1.12x, against the same baseline within the hour.

    .venv/bin/python -m loadtests.bench_ab --baseline-src ../old/service --model identity -c 32
    .venv/bin/python -m loadtests.bench_ab --baseline-src ../old/service --client pa-binary
    .venv/bin/python -m loadtests.bench_ab --baseline-src ../old/service --client pa-grpc-stream

With no `--baseline-src` both sides run this tree, and `--current-config` / `--baseline-config`
give each side's model its own config.yaml: one feature on against off, e.g. drift monitoring
on the bundled digits (which carries its reference profile):

    .venv/bin/python -m loadtests.bench_ab --model digits -c 32 \
        --baseline-config 'drift: {enabled: false}'
"""

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from loadtests.bench_models import build_repository, one_row_bodies
from loadtests.harness import machine, wrk
from loadtests.harness.cpu import process_cpu_seconds
from loadtests.harness.perf_analyzer import PerfAnalyzer, find_perf_analyzer
from loadtests.harness.processes import ROOT, free_port, pinned
from loadtests.harness.results import write_results
from loadtests.harness.server import CURRENT, Source, check_source, inscale_server

BUNDLED = ROOT / "service" / "inscale" / "bundled_models"

# --client: perf_analyzer's protocol and flags, per choice (wrk is the default, on /predict).
PERF_ANALYZER: dict[str, tuple[str, list[str]]] = {
    "pa-binary": ("http", ["--input-tensor-format", "binary", "--output-tensor-format", "binary"]),
    "pa-json": ("http", ["--input-tensor-format", "json", "--output-tensor-format", "json"]),
    "pa-grpc": ("grpc", []),
    "pa-grpc-stream": ("grpc", ["--streaming"]),
}


class Turn:
    """One measurement of one server: wrk on `/predict`, or perf_analyzer on V2 infer over
    HTTP or gRPC."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.body = one_row_bodies(work, [args.model])[args.model]
        self.report = work / "perf_analyzer.csv"
        self.tool: PerfAnalyzer | None = None
        if args.client != "wrk":
            found = find_perf_analyzer()
            if isinstance(found, str):
                raise SystemExit(f"perf_analyzer cannot run here: {found}")
            self.tool = found
            row = json.loads(self.body.read_text())["inputs"][0]
            self.data = work / "input_data.json"
            self.data.write_text(json.dumps({"data": [{"input": row}]}))

    def __call__(self, base_url: str, grpc_address: str, seconds: float) -> dict[str, float]:
        """req/s, p50 and p99 (us) of one turn."""
        args, client = self.args, [self.args.client_cpu]
        if self.tool is None:
            report = wrk.run(
                f"{base_url}/predict",
                self.body,
                connections=args.connections,
                seconds=max(1, round(seconds)),
                cpus=client,
            )
            return {"requests_per_s": report.requests_per_s} | report.as_dict()
        protocol, flags = PERF_ANALYZER[args.client]
        measure = [
            "--concurrency-range", str(args.connections),
            "--measurement-interval", str(int(seconds * 1000)),
            "--stability-percentage", "50", "--max-trials", "5",
            "--input-data", str(self.data), *flags,
            "-f", str(self.report),
        ]  # fmt: skip
        address = grpc_address if protocol == "grpc" else base_url
        command = self.tool.command(address, args.model, *measure, protocol=protocol)
        command = [*pinned(client), *command]
        done = subprocess.run(command, env=self.tool.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"perf_analyzer failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        with self.report.open() as f:
            (measured,) = list(csv.DictReader(f))
        return {
            "requests_per_s": float(measured["Inferences/Second"]),
            "p50_us": float(measured["p50 latency"]),
            "p99_us": float(measured["p99 latency"]),
        }


def _repository(folder: Path, model: str, config: str | None) -> Path:
    """One side's models: the benchmark's (one intra-op thread) or the bundled digits, with
    that side's config.yaml when given."""
    repo = folder / "models"
    if model == "digits":
        repo.mkdir(parents=True)
        shutil.copytree(BUNDLED / "digits", repo / "digits")
    else:
        build_repository(repo, [model], 1)
    if config is not None:
        (repo / model / "config.yaml").write_text(config + "\n")
    return repo


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--baseline-src", type=Path, help="its service/ folder (default: this tree)"
    )
    parser.add_argument("--model", default="identity", choices=("identity", "wide", "digits"))
    parser.add_argument("--current-config", help="YAML: config.yaml of the current side's model")
    parser.add_argument("--baseline-config", help="YAML: config.yaml of the baseline's model")
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument(
        "--client",
        default="wrk",
        choices=("wrk", *PERF_ANALYZER),
        help="wrk on /predict, or perf_analyzer on V2 infer: HTTP with binary or JSON "
        "tensors, gRPC unary or streaming",
    )
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--duration", type=float, default=2, help="seconds per turn")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "loadtests" / "results" / "ab.json")
    args = parser.parse_args()
    baseline = CURRENT if args.baseline_src is None else Source.of(args.baseline_src)
    sources = {"current": CURRENT, "baseline": baseline}
    for source in sources.values():
        check_source(source)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="inscale-ab-") as tmp:
        work = Path(tmp)
        configs = {"current": args.current_config, "baseline": args.baseline_config}
        repos = {name: _repository(work / name, args.model, configs[name]) for name in sources}
        turn_of = Turn(args, work)
        with ExitStack() as stack:
            targets = {}
            pids = {}
            for name, source in sources.items():
                grpc_port = free_port()
                server = stack.enter_context(
                    inscale_server(
                        work / f"{name}.log",
                        model_repository=repos[name],
                        cpus=[args.server_cpu],
                        source=source,
                        extra=["--grpc-port", str(grpc_port)],
                    )
                )
                targets[name] = (server.url, f"127.0.0.1:{grpc_port}")
                pids[name] = server.pid
            for url, grpc_address in targets.values():
                turn_of(url, grpc_address, 2)  # warm-up
            for turn in range(args.rounds):
                names = list(targets) if turn % 2 == 0 else list(targets)[::-1]
                for name in names:
                    before = process_cpu_seconds(pids[name])
                    figures = turn_of(*targets[name], args.duration)
                    # The server's own CPU per answer: the hypervisor's steal, which moves
                    # throughput by tens of percent here, is not charged to the process.
                    served = figures["requests_per_s"] * args.duration
                    cpu = process_cpu_seconds(pids[name]) - before
                    figures["cpu_us_per_request"] = cpu / max(served, 1) * 1e6
                    rows.append({"side": name, "round": turn} | figures)
                    print(
                        f"round {turn} {name:8} {figures['requests_per_s']:8.0f} req/s  "
                        f"p50 {figures['p50_us'] / 1000:6.2f} ms  "
                        f"p99 {figures['p99_us'] / 1000:6.2f} ms",
                        flush=True,
                    )
    ratios: dict[str, list[float]] = {
        "requests_per_s": [],
        "p50_us": [],
        "p99_us": [],
        "cpu_us_per_request": [],
    }
    for turn in range(args.rounds):
        pair = {r["side"]: r for r in rows if r["round"] == turn}
        for key, values in ratios.items():
            values.append(pair["current"][key] / max(pair["baseline"][key], 1e-9))
    medians = {key: statistics.median(values) for key, values in ratios.items()}
    print(
        f"\n{args.model} ({args.client}) at {args.connections} connections, current / baseline, "
        f"median of "
        f"{args.rounds} rounds: req/s {medians['requests_per_s']:.3f}, "
        f"p50 {medians['p50_us']:.3f}, p99 {medians['p99_us']:.3f}, "
        f"server CPU per request {medians['cpu_us_per_request']:.3f} "
        f"(per round req/s: {', '.join(f'{r:.2f}' for r in ratios['requests_per_s'])})"
    )
    write_results(
        args.out,
        machine.facts(),
        model=args.model,
        client=args.client,
        connections=args.connections,
        baseline=str(args.baseline_src or "this tree"),
        configs={"current": args.current_config, "baseline": args.baseline_config},
        rows=rows,
        median_ratios=medians,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
