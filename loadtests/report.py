"""Turn a run (loadtests.run_load) into PNG plots and a Markdown summary with the knee.

    .venv/bin/python -m loadtests.report RUN_DIR --p99-target-ms 50

Writes into RUN_DIR (or --out): throughput.png (answers/s against users), latency.png
(p50/p95/p99 against users), batch_size.png (rows per model run against users), memory.png
(server resident memory over time), timeline.png (users, answers/s and p99 each second),
hpa.png with --hpa-target or --hpa-manifest, report.md and report.json.

The knee is the highest load level that meets the target: p99 of successful requests within
--p99-target-ms, and at most --max-error-rate of the requests failed. Lower levels that
missed it are listed (on a shared machine, usually other work at that moment).
"""

import argparse
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

from loadtests import hpa, plots, server_metrics
from loadtests import levels as lv


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, help="where the report goes (default: RUN_DIR)")
    parser.add_argument("--p99-target-ms", type=float, default=50.0)
    parser.add_argument("--max-error-rate", type=float, default=0.01, help="0.01 is 1%%")
    parser.add_argument("--model", help="model whose server metrics count (default: the run's)")
    hpa_group = parser.add_mutually_exclusive_group()
    hpa_group.add_argument(
        "--hpa-target", type=float, help="replay an HPA on requests in flight per pod"
    )
    hpa_group.add_argument("--hpa-manifest", type=Path, help="replay this HPA (target, bounds)")
    parser.add_argument("--hpa-max-replicas", type=int, default=10)
    return parser.parse_args(argv)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _pinning(cpus: list[int] | None) -> str:
    return f"pinned to cpus {','.join(map(str, cpus))}" if cpus else "not pinned"


def level_table(levels: list[lv.Level]) -> list[str]:
    lines = [
        "| users | answers/s | ok/s | failed | p50 ms | p95 ms | p99 ms | rows/run | server cpu |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in levels:
        rows = "-" if math.isnan(level.mean_batch_rows) else f"{level.mean_batch_rows:.1f}"
        cores = "-" if math.isnan(level.server_cores) else f"{level.server_cores:.2f}"
        lines.append(
            f"| {level.users} | {level.throughput:,.0f} | {level.ok_throughput:,.0f} "
            f"| {level.error_rate:.1%} | {_ms(level.percentile(50))} | {_ms(level.percentile(95))} "
            f"| {_ms(level.percentile(99))} | {rows} | {cores} |"
        )
    return lines


def knee_sentence(levels: list[lv.Level], args: argparse.Namespace) -> str:
    target = f"p99 ≤ {args.p99_target_ms:g} ms with at most {args.max_error_rate:.0%} failed"
    found = lv.knee(levels, args.p99_target_ms, args.max_error_rate)
    if found is None:
        return f"**No level meets the target** ({target}): even the lowest load misses it."
    text = (
        f"**Knee: {found.users} users**, {found.ok_throughput:,.0f} successful answers/s with "
        f"p99 {found.percentile(99):.1f} ms ({target})."
    )
    missed = [
        level
        for level in levels
        if level.users < found.users
        and not lv.meets(level, args.p99_target_ms, args.max_error_rate)
    ]
    if missed:
        text += (
            " Lower levels that missed it: "
            + ", ".join(
                f"{m.users} users (p99 {_ms(m.percentile(99))} ms, {m.error_rate:.1%} failed)"
                for m in missed
            )
            + "; the timeline shows when."
        )
    after = [level for level in levels if level.users > found.users]
    if after:
        nxt = after[0]
        text += (
            f" The next level, {nxt.users} users, gives {nxt.ok_throughput:,.0f}/s at p99 "
            f"{_ms(nxt.percentile(99))} ms with {nxt.error_rate:.1%} failed."
        )
    else:
        text += " That is the highest level run: the ramp did not reach the knee."
    return text


def hpa_section(args: argparse.Namespace, instants: list[Any], model: str | None) -> list[str]:
    if args.hpa_manifest is not None:
        policy = hpa.policy_from_manifest(args.hpa_manifest)
        source = f"the HPA in `{args.hpa_manifest}`"
    elif args.hpa_target is not None:
        policy = hpa.Policy(target=args.hpa_target, max_replicas=args.hpa_max_replicas)
        source = "an HPA with default behaviour"
    else:
        return []
    if policy.metric != "inscale_requests_in_flight":
        raise SystemExit(f"the replay knows inscale_requests_in_flight, not {policy.metric}")
    decisions = hpa.simulate(lv.in_flight(instants, model), policy, start=policy.min_replicas)
    header = ["", "## Autoscaling replay", ""]
    if not decisions:
        return [*header, f"The run is shorter than one HPA sync ({policy.sync_s:g} s)."]
    plots.hpa(decisions, policy, args.out / "hpa.png")
    changes = [d for d in decisions if d.replicas != d.replicas_before]
    lines = [
        *header,
        f"Replaying {source} on this run's requests in flight for `{model}` (target "
        f"{policy.target:g} per pod averaged over {policy.metric_window_s:g} s, "
        f"{policy.min_replicas} to {policy.max_replicas} replicas, a decision every "
        f"{policy.sync_s:g} s), assuming the same total load spreads evenly over the pods: "
        f"it would have made {len(changes)} change(s) and ended at {decisions[-1].replicas} "
        "replicas. A CPU target in the same HPA is not replayed.",
        "",
        *(
            f"- at {d.time:.0f} s: {d.total:.1f} in flight in all, "
            f"{d.replicas_before} → {d.replicas} replicas"
            for d in changes
        ),
        "",
        "![HPA replay](hpa.png)",
    ]
    return lines


def write_report(args: argparse.Namespace) -> dict[str, Any]:
    args.out = args.out or args.run_dir
    args.out.mkdir(parents=True, exist_ok=True)
    run_file = args.run_dir / "run.json"
    run: dict[str, Any] = json.loads(run_file.read_text()) if run_file.exists() else {}
    model = args.model or run.get("model")
    requests = lv.read_requests(args.run_dir / "requests.csv")
    instants = server_metrics.read_instants(args.run_dir / "metrics.jsonl")
    levels = lv.by_level(requests, instants, model)
    if not levels:
        raise SystemExit(f"{args.run_dir}: no load level lasted a second; nothing to report")

    plots.throughput(levels, args.out / "throughput.png")
    plots.latency(levels, args.p99_target_ms, args.out / "latency.png")
    plots.batch_size(levels, args.out / "batch_size.png")
    plots.memory(lv.memory_series(instants), args.out / "memory.png")
    plots.timeline(lv.per_second(requests), args.p99_target_ms, args.out / "timeline.png")

    failures = sum((level.failures for level in levels), start=Counter[str]())
    client = run.get("client", {})
    lines = [
        f"# Load test report: {run.get('shape', '?')} to {run.get('peak_users', '?')} users "
        f"on `{model}`",
        "",
        knee_sentence(levels, args),
        "",
        f"Run: {run.get('seconds', '?')} s, users {', '.join(run.get('users', []))}, "
        f"{run.get('rows', 1)} row(s) per request, against {run.get('url', '?')}; "
        f"server metrics from {run.get('metrics_source', 'nowhere')}.",
    ]
    if client:
        lines.append(
            f"Locust used {client['cores']:.2f} cores ({_pinning(run.get('client_cpus'))})"
            + (
                f"; the server {run['server']['cores']:.2f} ({_pinning(run['server_cpus'])})."
                if "server" in run
                else "."
            )
        )
        if run.get("other_cores", 0) >= 0.2:
            lines.append(
                f"Other work on the machine took {run['other_cores']:.2f} cores on average "
                "during the run: expect noise in every figure."
            )
        if client["cores"] > 0.9 * max(1, len(run.get("client_cpus") or [1])):
            lines.append(
                "**The load generator was saturated**: the highest levels measure Locust, "
                "not the server. Use more client cores (`--processes`) or wrk."
            )
    lines += ["", *level_table(levels), ""]
    if failures:
        lines += ["Failures by class: " + ", ".join(f"{k} {v}" for k, v in failures.items()), ""]
    lines += [
        "![throughput](throughput.png) ![latency](latency.png)",
        "![batch size](batch_size.png) ![memory](memory.png)",
        "![timeline](timeline.png)",
        *hpa_section(args, instants, model),
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    found = lv.knee(levels, args.p99_target_ms, args.max_error_rate)
    summary = {
        "p99_target_ms": args.p99_target_ms,
        "knee_users": found.users if found else None,
        "levels": [
            {
                "users": level.users,
                "seconds": level.seconds,
                "requests": level.requests,
                "answers_per_s": level.throughput,
                "ok_per_s": level.ok_throughput,
                "error_rate": level.error_rate,
                "failures": dict(level.failures),
                **{f"p{q}_ms": level.percentile(q) for q in (50, 95, 99)},
                "mean_batch_rows": level.mean_batch_rows,
                "server_cores": level.server_cores,
            }
            for level in levels
        ],
    }
    (args.out / "report.json").write_text(json.dumps(_no_nan(summary), indent=2) + "\n")
    return summary


def _no_nan(value: Any) -> Any:
    """NaN (a level without server metrics) as null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def main() -> None:
    args = arguments()
    summary = write_report(args)
    print(f"{args.out / 'report.md'}: knee at {summary['knee_users']} users")


if __name__ == "__main__":
    main()
