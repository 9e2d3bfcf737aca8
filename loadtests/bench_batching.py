"""Does dynamic batching pay? wide (batching on) vs wide-nobatch vs identity (HTTP-only ceiling).

One server pinned to one core, wrk pinned to another, one real row per request, and raw ONNX
Runtime on the server's core as the compute floor. Prints tables and the issue's three targets,
and writes every figure to JSON. A benchmark, not a test: numbers depend on the machine.

Every cell (model x concurrency) is watched for other work on the machine (see
`loadtests/harness/disturbance.py`): a disturbed cell is repeated, and if it stays disturbed
the table says so. `--baseline-src DIR` runs a second server from another checkout's source
root in the same run, interleaved cell by cell, and prints the ratios current / baseline.

    .venv/bin/python -m loadtests.bench_batching --duration 10 --concurrency 1,8,32,64
    .venv/bin/python -m loadtests.bench_batching --concurrency 1,32 --baseline-src ../old/service
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests import bench_report
from loadtests.bench_models import WIDE_ONNX, build_repository
from loadtests.harness import machine, wrk
from loadtests.harness.disturbance import Detector, Disturbance, Limits, score
from loadtests.harness.processes import ROOT, Started, pinned
from loadtests.harness.results import write_results
from loadtests.harness.server import CURRENT, Source, check_source, inscale_server

SAMPLE = ROOT / "service" / "inscale" / "bundled_models" / "sample_input.json"
MODELS = ("wide", "wide-nobatch", "identity")
RAW_BATCH_SIZES = (1, 8, 32, 64)
Row = dict[str, Any]


@dataclass(frozen=True)
class Side:
    """One server under test: `current` (this tree) or `baseline`."""

    name: str
    source: Source
    server: Started


def model_counters(base_url: str, model: str) -> Row | None:
    """The server's own run and row counters; None if its /models answer has another shape."""
    try:
        versions = httpx.get(f"{base_url}/models/{model}", timeout=10).json()["versions"]
        stats: Row = next(v["stats"] for v in versions if "stats" in v)
        return stats
    except (httpx.HTTPError, KeyError, StopIteration, TypeError, ValueError):
        return None


def run_figures(before: Row | None, after: Row | None) -> Row:
    if before is None or after is None:
        return {"runs": None, "rows": None, "mean_rows_per_run": None, "server_ms_per_run": None}
    runs, rows = after["runs"] - before["runs"], after["rows"] - before["rows"]
    # Wall time from handing a batch to the worker thread until the event loop takes the result
    # back: raw ORT time plus thread hand-off, comparable with the raw ORT table.
    run_s = after["compute_seconds"] - before["compute_seconds"]
    return {
        "runs": runs,
        "rows": rows,
        "mean_rows_per_run": rows / runs if runs else None,
        "server_ms_per_run": run_s * 1e3 / runs if runs else None,
    }


def measure(
    side: Side, idle: list[int], detector: Detector, model: str, body: Path, conc: int, args: Any
) -> Row:
    """One warm-up run (fills queues, wakes threads), then the measured run, watched."""
    url = f"{side.server.url}/predict"
    client = None if args.no_pin else [args.client_cpu]
    if args.warmup:
        wrk.run(url, body, connections=conc, seconds=args.warmup, cpus=client)
    before = model_counters(side.server.url, model)
    with detector.window([side.server.pid], args.duration, idle_pids=idle) as seen:
        report = wrk.run(url, body, connections=conc, seconds=args.duration, cpus=client)
    found: Disturbance = seen[0]
    return {
        "side": side.name,
        "model": model,
        "concurrency": conc,
        "requests_per_s": report.requests_per_s,
        "p50_ms": report.p50_us / 1e3,
        "p90_ms": report.p90_us / 1e3,
        "p99_ms": report.p99_us / 1e3,
        "errors": report.errors,
        **run_figures(before, model_counters(side.server.url, model)),
        "server_cores": found.server_cores,
        "other_cores": found.other_cores,
        "invalid": bench_report.invalid_reason(report),
        "disturbance": found,  # replaced by its dict once the run's references are final
        "wrk": report.as_dict(),
    }


def measure_cell(
    sides: list[Side], detector: Detector, model: str, body: Path, conc: int, args: Any
) -> list[Row]:
    """Every side once, back to back (A, B); the pair is repeated while any side was
    disturbed, up to --retries times, and the least disturbed pair is kept."""
    best: list[Row] | None = None
    attempt = 0
    while attempt <= args.retries:
        attempt += 1
        pids = [s.server.pid for s in sides]
        rows = [
            measure(s, [p for p in pids if p != s.server.pid], detector, model, body, conc, args)
            for s in sides
        ]
        worst = max(score(r["disturbance"], detector.limits) for r in rows)
        if best is None or worst < max(score(r["disturbance"], detector.limits) for r in best):
            best = rows
        if worst <= 1 or attempt > args.retries:
            break
        why = [f"{r['side']}: {'; '.join(r['disturbance'].reasons)}" for r in rows]
        print(f"    disturbed ({', '.join(w for w in why if not w.endswith(': '))}), repeating")
    assert best is not None
    for r in best:
        r["attempts"] = attempt
    return best


def raw_ort(prefix: list[str], threads: int) -> Row:
    sizes = ",".join(map(str, RAW_BATCH_SIZES))
    cmd = [*prefix, sys.executable, "-m", "loadtests.bench_models", str(WIDE_ONNX)]
    cmd += ["--sample", str(SAMPLE), "--batch-sizes", sizes, "--intra-op-threads", str(threads)]
    # Its stderr goes straight to ours, so a failure shows ONNX Runtime's own message.
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True)
    result: Row = json.loads(done.stdout)
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="subset of " + ",".join(MODELS))
    parser.add_argument("--concurrency", default="1,8,32,64", help="wrk connections, per model")
    # wrk takes whole seconds only.
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="run without taskset")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per model, server and raw alike; 0 (default) is the server's "
        "default, whose threads pin themselves one per physical core, escaping taskset",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="another checkout's source root (holding inscale/ or the old service/ package): "
        "its server runs in this run too, interleaved cell by cell",
    )
    parser.add_argument("--retries", type=int, default=2, help="repeats of a disturbed cell")
    parser.add_argument("--max-other-cores", type=float, default=Limits.other_cores)
    parser.add_argument("--max-slowdown", type=float, default=Limits.slowdown)
    parser.add_argument("--out", type=Path, default=Path("results/bench_batching.json"))
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if args.duration < 1 or args.warmup < 0 or args.retries < 0:
        parser.error("--duration must be at least 1, --warmup and --retries at least 0")
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


@contextmanager
def servers(args: argparse.Namespace, repo: Path, workdir: Path) -> Iterator[list[Side]]:
    sources = [("current", CURRENT)]
    if args.baseline_src:
        sources.append(("baseline", Source.of(args.baseline_src)))
    cpus = None if args.no_pin else [args.server_cpu]
    with ExitStack() as stack:
        sides = []
        for name, source in sources:
            check_source(source)
            log = workdir / f"{name}.log"
            started = inscale_server(log, model_repository=repo, cpus=cpus, source=source)
            sides.append(Side(name, source, stack.enter_context(started)))
        yield sides


def run_http(args: argparse.Namespace, detector: Detector) -> tuple[list[Row], list[Side]]:
    first_row = json.loads(SAMPLE.read_text())["inputs"][0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="inscale-bench-") as tmp:
        repo = Path(tmp) / "models"
        build_repository(repo, args.models, args.intra_op_threads)
        bodies = {m: Path(tmp) / f"{m}.json" for m in args.models}
        for model, body in bodies.items():
            body.write_text(json.dumps({"model": model, "inputs": [first_row]}))
        with servers(args, repo, Path(tmp)) as sides:
            # Models (and sides) compared at one concurrency run back to back, so drifting
            # background load on a shared machine hits both sides of a comparison alike.
            for conc in args.concurrency:
                for model, body in bodies.items():
                    print(f"  {model} c={conc} ...", flush=True)
                    rows += measure_cell(sides, detector, model, body, conc, args)
    for r in rows:  # judged again with the fastest probe references of the whole run
        r["disturbance"] = detector.rejudge(r["disturbance"]).as_dict()
        r["disturbed"] = r["disturbance"]["disturbed"]
    order = {m: i for i, m in enumerate(args.models)}
    return sorted(rows, key=lambda r: (order[r["model"]], r["concurrency"])), sides


def main() -> int:
    args = parse_args()
    check_tools(args)
    # A plain `kill` of the benchmark must still stop the servers: turn it into an exception.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    facts = machine.facts()  # before we add load of our own
    limits = Limits(other_cores=args.max_other_cores, slowdown=args.max_slowdown)
    detector = Detector([] if args.no_pin else [args.server_cpu, args.client_cpu], limits)
    print("calibrating the work-rate probe on each core...", flush=True)
    references = detector.calibrate()
    print("raw ONNX Runtime on the server core...", flush=True)
    raw = raw_ort(pinned(None if args.no_pin else [args.server_cpu]), args.intra_op_threads)
    rows, sides = run_http(args, detector)
    by_side = {s.name: [r for r in rows if r["side"] == s.name] for s in sides}
    targets = {
        name: bench_report.targets_met(side_rows, raw) for name, side_rows in by_side.items()
    }
    for name, side_rows in by_side.items():
        if len(by_side) > 1:
            print(f"\n=== {name}: {next(s.source for s in sides if s.name == name).root}")
        bench_report.print_tables(side_rows, raw, targets[name])
    ratios = bench_report.ratios(by_side["current"], by_side.get("baseline", []))
    if ratios:
        bench_report.print_ratios(ratios)
    bench_report.warn_disturbed(rows)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    sources = {s.name: {"root": str(s.source.root), "package": s.source.package} for s in sides}
    baseline = {"http": by_side["baseline"], "targets": targets["baseline"]} if ratios else None
    write_results(
        args.out,
        {**facts, "onnxruntime": raw["onnxruntime"]},
        settings=settings,
        sources=sources,
        disturbance_limits=asdict(limits) | {"probe_reference_ns": references},
        raw_ort=raw,
        http=by_side["current"],
        targets=targets["current"],
        baseline=baseline,
        ratios=ratios,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
