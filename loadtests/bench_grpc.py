"""gRPC against HTTP on the same server: does the second protocol keep up with the first?

One server on the bundled models with gRPC on, pinned to one core; Triton's perf_analyzer on
another drives `digits-wide` (one real row per request) four ways, side by side in one run and
interleaved round by round: gRPC with raw tensors, gRPC streaming, HTTP with binary tensors,
HTTP with JSON tensors. Each cell is measured at every concurrency; the figures are medians
over the rounds. The targets (issue 10): at concurrency 32 gRPC reaches at least the
requests/s of HTTP binary, and at concurrency 1 its p50 is within 1.2x of HTTP binary's.

    .venv/bin/python -m loadtests.bench_grpc --rounds 3 --concurrency 1,32

Prints a table and writes every figure to JSON. A benchmark, not a test.
"""

import argparse
import csv
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from loadtests.harness import machine
from loadtests.harness.disturbance import Detector
from loadtests.harness.perf_analyzer import PerfAnalyzer, find_perf_analyzer
from loadtests.harness.processes import ROOT, free_port, pinned
from loadtests.harness.results import write_results
from loadtests.harness.server import inscale_server

Row = dict[str, Any]
MODEL = "digits-wide"
SAMPLE = ROOT / "service" / "inscale" / "bundled_models" / "sample_input.json"
# mode: (perf_analyzer protocol, its extra flags)
MODES: dict[str, tuple[str, list[str]]] = {
    "gRPC raw": ("grpc", []),
    "gRPC stream": ("grpc", ["--streaming"]),
    "HTTP binary": (
        "http",
        ["--input-tensor-format", "binary", "--output-tensor-format", "binary"],
    ),
    "HTTP JSON": ("http", ["--input-tensor-format", "json", "--output-tensor-format", "json"]),
}


def input_data(path: Path) -> Path:
    """The bundled held-out rows as perf_analyzer's --input-data: one row per request."""
    rows = json.loads(SAMPLE.read_text())["inputs"]
    path.write_text(json.dumps({"data": [{"input": row} for row in rows]}))
    return path


def measure(
    tool: PerfAnalyzer,
    address: str,
    protocol: str,
    flags: list[str],
    concurrency: int,
    data: Path,
    report: Path,
    args: argparse.Namespace,
) -> Row:
    command = [
        str(tool.binary), "-m", MODEL, "-u", address, "-i", protocol, *flags,
        "--concurrency-range", str(concurrency),
        "--input-data", str(data),
        "--measurement-mode", "time_windows",
        "--measurement-interval", str(int(args.window_s * 1000)),
        "--stability-percentage", str(args.stability),
        "--max-trials", "6",
        "-f", str(report),
    ]  # fmt: skip
    client = [] if args.no_pin else pinned([args.client_cpu])
    done = subprocess.run(
        [*client, *command], env=tool.env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        problem = [ln for ln in done.stdout.splitlines() if "error" in ln.lower()]
        return {"error": (problem or done.stderr.strip().splitlines() or ["?"])[-1]}
    with report.open() as f:
        (measured,) = list(csv.DictReader(f))
    return {
        "requests_per_s": float(measured["Inferences/Second"]),
        "p50_ms": float(measured["p50 latency"]) / 1e3,
        "p99_ms": float(measured["p99 latency"]) / 1e3,
    }


def run(args: argparse.Namespace, workdir: Path) -> list[Row]:
    tool = find_perf_analyzer()
    if isinstance(tool, str):
        raise SystemExit(f"perf_analyzer cannot run here: {tool}")
    data = input_data(workdir / "rows.json")
    grpc_port = free_port()
    detector = Detector([] if args.no_pin else [args.server_cpu, args.client_cpu], probe=False)
    cells: list[Row] = []
    server_cpus = None if args.no_pin else [args.server_cpu]
    extra = ["--grpc-port", str(grpc_port)]
    with inscale_server(workdir / "server.log", cpus=server_cpus, extra=extra) as server:
        http_address = server.url.removeprefix("http://")
        grpc_address = f"127.0.0.1:{grpc_port}"
        for round_number in range(1, args.rounds + 1):
            for concurrency in args.concurrency:
                for mode, (protocol, flags) in MODES.items():
                    address = grpc_address if protocol == "grpc" else http_address
                    report = workdir / f"cell-{len(cells)}.csv"
                    with detector.window([server.pid], 0) as seen:
                        row = measure(
                            tool, address, protocol, flags, concurrency, data, report, args
                        )
                    use = seen[0]
                    row |= {
                        "mode": mode,
                        "concurrency": concurrency,
                        "round": round_number,
                        "server_cores": use.server_cores,
                        "client_cores": use.ours_cores,
                        "other_cores": use.other_cores,
                        "disturbed": use.disturbed,
                        "disturbance": use.as_dict(),
                    }
                    cells.append(row)
                    print(f"  round {round_number} {mode:<12} c={concurrency:<3} {_brief(row)}")
    return cells


def _brief(row: Row) -> str:
    if "error" in row:
        return f"FAILED: {row['error']}"
    flag = "  DISTURBED" if row["disturbed"] else ""
    return f"{row['requests_per_s']:8.0f} req/s  p50 {row['p50_ms']:6.2f} ms{flag}"


def summarize(cells: list[Row], concurrencies: list[int]) -> list[Row]:
    """Median per mode and concurrency over the rounds that measured."""
    table: list[Row] = []
    for concurrency in concurrencies:
        for mode in MODES:
            good = [
                c
                for c in cells
                if c["mode"] == mode and c["concurrency"] == concurrency and "error" not in c
            ]
            row: Row = {"mode": mode, "concurrency": concurrency, "rounds": len(good)}
            if good:
                for key in ("requests_per_s", "p50_ms", "p99_ms", "server_cores"):
                    row[key] = statistics.median(c[key] for c in good)
                row["disturbed_rounds"] = sum(c["disturbed"] for c in good)
            table.append(row)
    return table


def targets(table: list[Row]) -> list[Row]:
    cell = {(r["mode"], r["concurrency"]): r for r in table if r["rounds"]}
    found: list[Row] = []
    high, low = ("gRPC raw", 32), ("HTTP binary", 32)
    if high in cell and low in cell:
        ratio = cell[high]["requests_per_s"] / cell[low]["requests_per_s"]
        found.append(
            {"target": "c=32: gRPC req/s >= HTTP binary req/s", "ratio": ratio, "ok": ratio >= 1}
        )
    high, low = ("gRPC raw", 1), ("HTTP binary", 1)
    if high in cell and low in cell:
        ratio = cell[high]["p50_ms"] / cell[low]["p50_ms"]
        found.append(
            {"target": "c=1: gRPC p50 <= 1.2x HTTP binary p50", "ratio": ratio, "ok": ratio <= 1.2}
        )
    return found


def print_table(table: list[Row], met: list[Row]) -> None:
    print(
        f"\n{'mode':<12} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv cores':>9} {'rounds':>6} {'disturbed':>9}"
    )
    for r in table:
        if not r["rounds"]:
            print(f"{r['mode']:<12} {r['concurrency']:>4} {'no measurement':>27}")
            continue
        print(
            f"{r['mode']:<12} {r['concurrency']:>4} {r['requests_per_s']:>9.0f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['server_cores']:>9.2f} "
            f"{r['rounds']:>6} {r['disturbed_rounds']:>9}"
        )
    print()
    for t in met:
        print(f"{'PASS' if t['ok'] else 'FAIL'}  {t['target']}: {t['ratio']:.3f}")
    disturbed = sum(r.get("disturbed_rounds", 0) for r in table)
    if disturbed:
        print(f"WARNING: {disturbed} measurements were disturbed by other work on the machine")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,32", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=4.0, help="perf_analyzer window")
    parser.add_argument("--stability", type=int, default=15, help="perf_analyzer: percent")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench_grpc.json")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    facts = machine.facts()
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        cells = run(args, Path(tmp))
    table = summarize(cells, args.concurrency)
    met = targets(table)
    print_table(table, met)
    write_results(args.out, facts, table=table, targets=met, cells=cells)


if __name__ == "__main__":
    main()
