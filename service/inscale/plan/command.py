"""`inscale plan RESULTS --rps N --slo-p99-ms MS`: how many replicas of which size serve a
rate under a latency objective, from one replica's curve measured by `inscale profile`.

The CLI calls `add_arguments` on its `plan` subparser and `run` with the parsed arguments;
`python -m inscale.plan.command` runs it alone. The formula is in `inscale.plan.capacity`.
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from inscale.errors import InscaleError
from inscale.plan import overlay
from inscale.plan.capacity import (
    DEFAULT_HEADROOM,
    DEFAULT_LB_EFFICIENCY,
    KNEE_SHARE,
    MEMORY_LIMIT_FACTOR,
    MEMORY_MARGIN,
    MIN_REPLICAS,
    Inputs,
    Plan,
    plan,
)
from inscale.plan.results import read_results

# The repository's k8s/ folder, when inscale runs from a checkout (an editable install).
REPO_K8S = Path(__file__).resolve().parents[3] / "k8s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, help="results.json written by `inscale profile`")
    parser.add_argument("--rps", type=float, required=True, help="requests/s to serve in all")
    parser.add_argument(
        "--slo-p99-ms", type=float, required=True,
        help="p99 latency objective; every level is judged again against it",
    )  # fmt: skip
    parser.add_argument(
        "--headroom", type=float, default=DEFAULT_HEADROOM,
        help=f"share of a replica's capacity kept free (default {DEFAULT_HEADROOM})",
    )  # fmt: skip
    parser.add_argument(
        "--lb-efficiency", type=float, default=DEFAULT_LB_EFFICIENCY,
        help="throughput of N balanced replicas over N x one replica's "
        f"(default {DEFAULT_LB_EFFICIENCY}, an assumption: see the README)",
    )  # fmt: skip
    parser.add_argument(
        "--memory-limit-factor", type=float, default=MEMORY_LIMIT_FACTOR,
        help=f"memory limit over request (default {MEMORY_LIMIT_FACTOR}; 1: Guaranteed QoS)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "--overlay", type=Path, help="write a kustomize overlay here (a new or empty folder)"
    )
    parser.add_argument(
        "--base", type=Path, default=REPO_K8S,
        help="the manifests the overlay patches (default: the repository's k8s/)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        results = read_results(args.results)
        inputs = Inputs(
            args.rps, args.slo_p99_ms, args.headroom, args.lb_efficiency,
            args.memory_limit_factor,
        )  # fmt: skip
        planned = plan(results, inputs)
        written = None
        if args.overlay is not None:
            base = overlay.read_base(args.base)
            relative = overlay.relative(args.base, args.overlay)
            built = overlay.build(planned, base, relative, str(args.results))
            overlay.write(args.overlay, built)
            written = built
    except InscaleError as exc:
        print(f"inscale plan: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(as_json(planned), indent=2))
    else:
        print(table(planned))
    if written is not None:
        for note in written.notes:
            print(f"note: {note}", file=sys.stderr)
        where = f"{overlay.RENDER} {args.overlay}"
        print(f"wrote {args.overlay} (render: {where})", file=sys.stderr if args.json else None)
    return 0


def formula(p: Plan) -> str:
    i = p.inputs
    return (
        f"max({MIN_REPLICAS}, ceil({i.rps:g} / ({p.chosen.rps:g} x "
        f"(1 - {i.headroom:g}) x {i.lb_efficiency:g}))) = max({MIN_REPLICAS}, "
        f"ceil({p.replicas_exact:.2f})) = {p.replicas}"
    )


def knobs(config: dict[str, float | int]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in config.items())


def table(p: Plan) -> str:
    c, i = p.chosen, p.inputs
    default = "the model's own config" if c.is_default else "not the model's own config"
    if p.confirmed:
        default += "; the profile's answer, checked side by side against the defaults"
    rows = [
        ("config", f"trial {c.trial}: {knobs(c.config)} ({default})"),
        ("capacity per replica", f"{c.rps:,.0f} req/s (p99 {c.p99_ms:g} ms; profiled against "
         f"{p.profile_slo_p99_ms:g} ms), reached from {c.concurrency} in flight (the knee: "
         f"the fewest with {KNEE_SHARE:.0%} of it)"),
        ("headroom", f"{i.headroom:g}: a replica is planned at {1 - i.headroom:.0%} of capacity"),
        ("load balancing", f"{i.lb_efficiency:g} of N x one replica"),
        ("replicas", formula(p)),
        ("cores per replica", f"{p.cores} (requests = limits, as profiled)"),
        ("memory per replica", f"request {p.memory_request_mi}Mi (RSS {c.rss_mb:g} MiB x "
         f"{MEMORY_MARGIN:g}, up to 64Mi), limit {p.memory_limit_mi}Mi "
         f"(x {i.memory_limit_factor:g}, up to 64Mi)"),
        ("autoscaler", f"minReplicas {p.replicas}, maxReplicas {p.max_replicas} = max(2 x "
         f"{p.replicas}, {p.replicas} + 4); in flight per pod {p.in_flight_target} = floor("
         f"{c.concurrency} x (1 - {i.headroom:g})); CPU target as in k8s/"),
        ("in all", f"{p.replicas * p.cores} cores, "
         f"{p.replicas * p.memory_request_mi:,}Mi memory requested"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    head = f"{p.model} version {p.version}: {i.rps:,.0f} req/s under a p99 of {i.slo_p99_ms:g} ms"
    lines = [head, ""] + [f"{name:<{width}}  {text}" for name, text in rows]
    if len(p.candidates) > 1:
        lines += ["", "feasible configs, best first (trial: capacity, knee, p99):"]
        lines += [
            f"  {x.trial}: {x.rps:,.0f} req/s from {x.concurrency} in flight, {x.p99_ms:g} ms  "
            f"{knobs(x.config)}"
            for x in p.candidates
        ]
    return "\n".join(lines)


def as_json(p: Plan) -> dict[str, Any]:
    return {
        "model": p.model,
        "version": p.version,
        "inputs": asdict(p.inputs),
        "profile_slo_p99_ms": p.profile_slo_p99_ms,
        "chosen": asdict(p.chosen),
        "usable_rps_per_replica": p.usable_rps,
        "replicas_exact": p.replicas_exact,
        "replicas": p.replicas,
        "formula": f"replicas = {formula(p)}",
        "per_replica": {
            "cpu": p.cores,
            "memory_request_mi": p.memory_request_mi,
            "memory_limit_mi": p.memory_limit_mi,
        },
        "autoscaler": {
            "min_replicas": p.replicas,
            "max_replicas": p.max_replicas,
            "in_flight_target": p.in_flight_target,
        },
        "model_config": overlay.model_config(p.chosen.config),
        "candidates": [asdict(x) for x in p.candidates],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inscale plan", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
