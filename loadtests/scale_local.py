"""Horizontal scaling on one machine: 1, 2 and N replicas behind haproxy, the same step ramp.

Each replica is an `inscale serve` process pinned to one of `--server-cpus` (replica i to
cpus[i % len]); haproxy (Debian's package, a plain foreground process on a free loopback
port, least-connections balancing) and wrk (one thread) share `--client-cpus`. For every
replica count the script starts the replicas and the balancer, runs wrk at each concurrency
of the ramp (a short warm-up, then the measured step) and stops them all.

wrk rather than Locust: it drives well over 10,000 requests/s from one core, so the load
generator is not what limits the figures, and it leaves the replicas' cores alone.

    .venv/bin/python -m loadtests.scale_local runs/scale --replicas 1,2,4 --step-seconds 5

Writes RUN_DIR/scaling.json (every step, with the CPU each side used), scaling.md (the table
and what limits the gain) and scaling.png (throughput and p99 against concurrency).
"""

import argparse
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from loadtests.haproxy import haproxy
from loadtests.harness import cpu, wrk
from loadtests.harness.disturbance import Detector, Limits, score
from loadtests.harness.processes import ROOT, Started
from loadtests.harness.server import inscale_server
from loadtests.scaling_report import write_outputs
from loadtests.server_metrics import Instant, parse_exposition

SAMPLE = ROOT / "service" / "inscale" / "bundled_models" / "sample_input.json"
Step = dict[str, Any]


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    two_cores = (os.cpu_count() or 1) >= 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--replicas", type=numbers, default=[1, 2, 4], help="e.g. 1,2,4")
    parser.add_argument("--concurrency", type=numbers, default=[4, 8, 16, 32, 64])
    parser.add_argument("--step-seconds", type=int, default=5, help="wrk takes whole seconds")
    parser.add_argument("--warmup-seconds", type=int, default=1)
    parser.add_argument("--server-cpus", type=numbers, default=[0] if two_cores else [])
    parser.add_argument("--client-cpus", type=numbers, default=[1] if two_cores else [])
    parser.add_argument("--model", default="digits-wide")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--model-repository", type=Path, help="default: the bundled models")
    parser.add_argument(
        "--retries", type=int, default=2, help="repeat a step that other work disturbed"
    )
    parser.add_argument(
        "--max-other-cores", type=float, default=0.25, help="other work a step may see"
    )
    return parser.parse_args(argv)


def write_body(args: argparse.Namespace) -> Path:
    rows = json.loads(SAMPLE.read_text())["inputs"]
    picked = [rows[i % len(rows)] for i in range(args.rows)]
    body: Path = args.run_dir / "body.json"
    body.write_text(json.dumps({"model": args.model, "inputs": picked}))
    return body


@contextmanager
def replicas_running(
    count: int, logs: Path, repo: Path | None, cpus: Sequence[int]
) -> Iterator[list[Started]]:
    """`count` servers; replica i is pinned to cpus[i % len(cpus)] (unpinned if no cpus)."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                inscale_server(
                    logs / f"replica-{i}" / "server.log",
                    model_repository=repo,
                    cpus=[cpus[i % len(cpus)]] if cpus else None,
                )
            )
            for i in range(count)
        ]


def batch_counters(replicas: list[Started], model: str) -> tuple[float, float] | None:
    """Rows and model runs so far, summed over the replicas (from their /metrics); None if
    a replica did not answer in time (a starved machine), which leaves the figure out."""
    rows = runs = 0.0
    for replica in replicas:
        try:
            text = httpx.get(f"{replica.url}/metrics", timeout=30).text
        except httpx.HTTPError:
            return None
        instant = Instant(0, parse_exposition(text))
        rows += instant.total("inscale_batch_size_rows_sum", model=model) or 0
        runs += instant.total("inscale_batch_size_rows_count", model=model) or 0
    return rows, runs


def measure_step(
    args: argparse.Namespace,
    detector: Detector,
    replicas: list[Started],
    lb: Started,
    body: Path,
    conc: int,
) -> Step:
    """One warm-up run (wakes threads, fills queues), then the measured run, watched for
    other work on the machine; the replicas' and haproxy's CPU time read around it."""
    url, cpus = f"{lb.url}/predict", args.client_cpus or None
    if args.warmup_seconds:
        wrk.run(url, body, connections=conc, seconds=args.warmup_seconds, cpus=cpus)
    pids = [r.pid for r in replicas]
    counters_before = batch_counters(replicas, args.model)
    before = [cpu.process_cpu_seconds(p) for p in [*pids, lb.pid]]
    with detector.window(pids, args.step_seconds, idle_pids=[lb.pid]) as seen:
        report = wrk.run(url, body, connections=conc, seconds=args.step_seconds, cpus=cpus)
    found = seen[0]
    used = [cpu.process_cpu_seconds(p) - b for p, b in zip([*pids, lb.pid], before, strict=True)]
    counters_after = batch_counters(replicas, args.model)
    rows_per_run = None
    if counters_before and counters_after and counters_after[1] > counters_before[1]:
        rows = counters_after[0] - counters_before[0]
        rows_per_run = rows / (counters_after[1] - counters_before[1])
    haproxy_cores = used[-1] / found.wall_s
    return {
        "replicas": len(replicas),
        "concurrency": conc,
        "requests_per_s": report.requests_per_s,
        # Answered 2xx: an error (a 503 from haproxy with no replica up) comes back fast.
        "ok_per_s": report.ok_per_s,
        "p50_ms": report.p50_us / 1e3,
        "p99_ms": report.p99_us / 1e3,
        "errors": report.errors,
        "mean_batch_rows": rows_per_run,  # load split over replicas makes smaller batches
        "replica_cores": [u / found.wall_s for u in used[:-1]],
        "server_cores": found.server_cores,
        "haproxy_cores": haproxy_cores,
        "wrk_cores": max(0.0, found.ours_cores - haproxy_cores),
        "other_cores": found.other_cores,  # other work on the machine meanwhile
        "disturbance": found,
        "wrk": report.as_dict(),
    }


def quietest_step(
    args: argparse.Namespace,
    detector: Detector,
    replicas: list[Started],
    lb: Started,
    body: Path,
    conc: int,
) -> Step:
    """On a shared machine other work comes and goes: repeat a step it disturbed, up to
    --retries times, and keep the attempt it disturbed least."""
    best: Step | None = None
    for attempt in range(1, args.retries + 2):
        step = measure_step(args, detector, replicas, lb, body, conc) | {"attempts": attempt}
        if best is None or score(step["disturbance"], detector.limits) < score(
            best["disturbance"], detector.limits
        ):
            best = step
        if not step["disturbance"].disturbed:
            break
    assert best is not None
    best["disturbance"] = best["disturbance"].as_dict()
    best["disturbed"] = best["disturbance"]["disturbed"]
    return best


def disturbed_by(step: Step) -> str:
    return "; ".join(step["disturbance"]["reasons"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    args.run_dir.mkdir(parents=True, exist_ok=True)
    body = write_body(args)
    load_at_start = os.getloadavg()
    limits = Limits(other_cores=args.max_other_cores)
    detector = Detector([*args.server_cpus, *args.client_cpus], limits)
    detector.calibrate(seconds=0.5, rounds=1)
    steps: list[Step] = []
    for count in args.replicas:
        workdir = args.run_dir / f"replicas-{count}"
        workdir.mkdir(exist_ok=True)
        with (
            replicas_running(count, workdir, args.model_repository, args.server_cpus) as replicas,
            haproxy([r.url for r in replicas], workdir, cpus=args.client_cpus) as lb,
        ):
            for conc in args.concurrency:
                step = quietest_step(args, detector, replicas, lb, body, conc)
                steps.append(step)
                print(
                    f"replicas {count} concurrency {conc}: {step['ok_per_s']:,.0f} ok req/s, "
                    f"p99 {step['p99_ms']:.1f} ms, errors {step['errors']}, "
                    f"rows/run {step['mean_batch_rows'] or 0:.1f}, "
                    f"server {step['server_cores']:.2f} cores, "
                    f"client {step['haproxy_cores'] + step['wrk_cores']:.2f}, "
                    f"other work {step['other_cores']:.2f}"
                    + (f" DISTURBED: {disturbed_by(step)}" if step["disturbed"] else ""),
                    flush=True,
                )
    result = {
        "settings": {
            "replicas": args.replicas,
            "concurrency": args.concurrency,
            "step_seconds": args.step_seconds,
            "server_cpus": args.server_cpus,
            "client_cpus": args.client_cpus,
            "model": args.model,
            "rows": args.rows,
            "nproc": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "retries": args.retries,
            "max_other_cores": args.max_other_cores,
        },
        "steps": steps,
    }
    write_outputs(result, args.run_dir)
    return result


if __name__ == "__main__":
    run(arguments())
