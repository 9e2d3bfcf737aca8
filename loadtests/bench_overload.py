"""Overload: does the latency promise hold when more arrives than the server can serve?

Two servers on the server core, started once and measured in interleaved turns: `digits-wide`
with `latency_slo_ms` (admission on: requests that cannot finish within it are refused at
once) and the same model with neither (every request is queued, today's default). Load comes
from an open-loop generator on the client core (`loadtests.harness.open_loop`: Poisson
arrivals at a set rate, latency from each request's scheduled time), at multiples of the
capacity measured first (wrk, closed loop, 32 connections, on the admission server), and in
bursts (a base rate with bursts of ten times it).

For each server and load: goodput (answers within the SLO per second), p50/p99 of answered
requests, what was refused or dropped by reason (the server's own `inscale_requests_total`
outcomes), connection errors, and resident memory after the run. A table goes to stdout and
everything to `--out` as JSON.

    .venv/bin/python -m loadtests.bench_overload            # about 4 minutes
    .venv/bin/python -m loadtests.bench_overload --loads 0.5,1,2,10 --duration-s 10
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from loadtests.bench_models import WIDE_ONNX
from loadtests.harness import machine, wrk
from loadtests.harness.processes import ROOT, Started, pinned
from loadtests.harness.results import write_results
from loadtests.harness.server import inscale_server

SAMPLE = ROOT / "service" / "inscale" / "bundled_models" / "sample_input.json"
OUTCOMES = ("success", "overloaded", "late", "timeout", "rejected", "preempted")
Row = dict[str, Any]


def build(root: Path, slo_ms: float) -> None:
    """`admission`: digits-wide promising `slo_ms`; `queueing`: the same with no objective;
    `refusing`: an objective no run can meet, so every request is refused (what a refusal
    costs)."""
    for name, config in (
        ("admission", f"latency_slo_ms: {slo_ms:g}\n"),
        ("queueing", "batching:\n  admission: false\n"),
        ("refusing", "latency_slo_ms: 0.001\n"),
    ):
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").symlink_to(WIDE_ONNX)
        (root / name / "config.yaml").write_text(config)


def body_for(model: str, workdir: Path) -> Path:
    rows = json.loads(SAMPLE.read_text())["inputs"][:1]
    path = workdir / f"{model}.json"
    path.write_text(json.dumps({"model": model, "inputs": rows}))
    return path


def outcomes(url: str, model: str) -> dict[str, float]:
    found = dict.fromkeys(OUTCOMES, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("inscale_requests_total{") and f'model="{model}"' in line:
            for outcome in OUTCOMES:
                if f'outcome="{outcome}"' in line:
                    found[outcome] = float(line.rsplit(" ", 1)[1])
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class GeneratorStuck(RuntimeError):
    pass


def open_loop(url: str, body: Path, rate: float, args: argparse.Namespace, burst: bool) -> Row:
    cmd = [*pinned(None if args.no_pin else [args.client_cpu]), sys.executable, "-m"]
    cmd += ["loadtests.harness.open_loop", "--url", url, "--body", str(body)]
    cmd += ["--rate", f"{rate:g}", "--duration-s", f"{args.duration_s:g}"]
    cmd += ["--slo-ms", f"{args.slo_ms:g}", "--max-connections", str(args.max_connections)]
    if burst:
        cmd += ["--burst-factor", "10", "--burst-s", "0.25", "--period-s", "2"]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=args.duration_s + 90, cwd=ROOT
        )
    except subprocess.TimeoutExpired as exc:
        # The generator could not even hand its requests over (the server stopped reading):
        # a result in itself, not a reason to lose the rest of the table.
        raise GeneratorStuck(f"the generator did not finish within {exc.timeout:g} s") from exc
    if done.returncode != 0:
        raise RuntimeError(f"open-loop generator failed:\n{done.stderr[-2000:]}")
    result: Row = json.loads(done.stdout)
    return result


def measure(server: Started, model: str, body: Path, rate: float, args: Any, burst: bool) -> Row:
    before = outcomes(server.url, model)
    result = open_loop(f"{server.url}/predict", body, rate, args, burst)
    after = outcomes(server.url, model)
    moved = {k: after[k] - before[k] for k in OUTCOMES}
    answered = sum(moved.values()) or 1.0
    return {
        "server": model,
        "offered_per_s": rate,
        "sent_per_s": result["sent"] / result["elapsed_s"],
        "burst": burst,
        "goodput_per_s": result["goodput_per_s"],
        "ok_p50_ms": result["ok_p50_ms"],
        "ok_p99_ms": result["ok_p99_ms"],
        "shed_fraction": {k: moved[k] / answered for k in OUTCOMES if k != "success"},
        "outcomes": moved,
        "connection_errors": result["connection_errors"],
        "generator_behind_s": result["generator_behind_s"],
        "rss_mb": rss_mb(server.pid),
        "open_loop": result,
    }


def table(rows: list[Row]) -> str:
    head = (
        "| server | load | offered/s | sent/s | goodput/s | ok p50 ms | ok p99 ms | "
        "shed: overloaded / late / timeout / queue full | conn errors | RSS MB |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "stuck" in r:
            lines.append(f"| {r['server']} | {r['load']} | {r['stuck']} |")
            continue
        shed = r["shed_fraction"]
        lines.append(
            f"| {r['server']} | {r['load']} | {r['offered_per_s']:.0f} | {r['sent_per_s']:.0f} "
            f"| {r['goodput_per_s']:.0f} | {r['ok_p50_ms']:.2f} | {r['ok_p99_ms']:.1f} | "
            f"{shed['overloaded']:.1%} / {shed['late']:.1%} / {shed['timeout']:.1%} / "
            f"{shed['rejected']:.1%} | {r['connection_errors']} | {r['rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--loads", default="0.5,1,2,10", help="multiples of the capacity")
    parser.add_argument("--duration-s", type=float, default=8.0)
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--max-connections", type=int, default=512)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "loadtests" / "results" / "overload.json"
    )
    args = parser.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    server_cpus = None if args.no_pin else [args.server_cpu]
    with tempfile.TemporaryDirectory(prefix="inscale-overload-") as tmp:
        workdir = Path(tmp)
        repo = workdir / "repo"
        build(repo, args.slo_ms)
        bodies = {m: body_for(m, workdir) for m in ("admission", "queueing", "refusing")}
        with inscale_server(
            workdir / "server.log", model_repository=repo, cpus=server_cpus
        ) as server:
            client = None if args.no_pin else [args.client_cpu]
            url = f"{server.url}/predict"
            wrk.run(url, bodies["admission"], connections=32, seconds=2, cpus=client)
            capacity = wrk.run(
                url, bodies["admission"], connections=32, seconds=5, cpus=client
            ).ok_per_s
            print(f"capacity (wrk, 32 connections, closed loop): {capacity:.0f} requests/s")
            # Clockwork's rule pays when refusing is far cheaper than serving. Here a refusal
            # still costs reading, parsing and answering the request: how much, in requests/s.
            refusals = wrk.run(
                url, bodies["refusing"], connections=32, seconds=5, cpus=client
            ).requests_per_s
            print(
                f"refusals (every request 503): {refusals:.0f} requests/s: a refusal costs "
                f"{capacity / refusals:.0%} of a served request; the server cannot even read "
                f"more than {refusals / capacity:.1f}x its capacity"
            )
            rows: list[Row] = []
            plan = [(f"{x:g}x", x * capacity, False) for x in loads]
            plan.append(("burst 0.5x+10x", 0.5 * capacity, True))
            for label, rate, burst in plan:
                for model in ("admission", "queueing"):  # interleaved: same minute, same noise
                    try:
                        row = measure(server, model, bodies[model], rate, args, burst)
                    except GeneratorStuck as exc:
                        print(f"| {model} | {label} | {exc} |", flush=True)
                        rows.append({"server": model, "load": label, "stuck": str(exc)})
                        continue
                    row["load"] = label
                    rows.append(row)
                    print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    write_results(
        args.out,
        machine.facts(),
        capacity_per_s=capacity,
        refusals_per_s=refusals,
        slo_ms=args.slo_ms,
        rows=rows,
    )


if __name__ == "__main__":
    main()
