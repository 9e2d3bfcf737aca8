"""scale_local.py's outputs: the JSON, a Markdown table that says what limits the gain, a plot."""

import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.ticker import ScalarFormatter

Step = dict[str, Any]


def peaks(steps: list[Step]) -> dict[int, Step]:
    """For each replica count, the step with the most successful requests/s."""
    best: dict[int, Step] = {}
    for step in steps:
        count = step["replicas"]
        if count not in best or step["ok_per_s"] > best[count]["ok_per_s"]:
            best[count] = step
    return dict(sorted(best.items()))


def cores_per_replica(count: int, settings: dict[str, Any]) -> float:
    """Each replica is pinned to one server core; unpinned, all share the machine."""
    cpus = settings["server_cpus"]
    return min(1.0, len(cpus) / count) if cpus else (settings["nproc"] or 1) / count


def _cpus(cpus: list[int], otherwise: str) -> str:
    return "cpus " + ",".join(map(str, cpus)) if cpus else otherwise


def limits(result: dict[str, Any]) -> list[str]:
    """Plain sentences on what bounds the gain, from what the run measured."""
    settings, best = result["settings"], peaks(result["steps"])
    cpus = settings["server_cpus"]
    cores = len(cpus) if cpus else settings["nproc"]
    one = best.get(min(best))
    lines = [
        f"Replicas run on {cores} core(s) ({_cpus(cpus, 'unpinned')}); haproxy and wrk on "
        f"{_cpus(settings['client_cpus'], 'any core')}. n replicas get {cores}/n cores each, "
        f"so throughput can only grow while n ≤ {cores}."
    ]
    for count, step in best.items():
        if one is None or count == min(best):
            continue
        gain = step["ok_per_s"] / one["ok_per_s"]
        ideal = min(count, cores) / min(min(best), cores)
        lines.append(
            f"{count} replicas: {gain:.2f}x the throughput of {min(best)} (at most {ideal:.1f}x "
            f"with these cores). At that peak the replicas used {step['server_cores']:.2f} "
            f"of their {cores} core(s), haproxy and wrk "
            f"{step['haproxy_cores'] + step['wrk_cores']:.2f}, other work "
            f"{step['other_cores']:.2f}."
        )
    others = max(s["other_cores"] for s in result["steps"])
    if others >= 0.2:
        lines.append(
            f"Other work on the machine took up to {others:.2f} cores during a step "
            "(column 'other work'): it took CPU from the replicas and the client, so these "
            "figures are noisy and lower than a quiet machine gives; rerun there for clean ones."
        )
    client_cpus = len(settings["client_cpus"]) or settings["nproc"]
    client_peak = max(s["haproxy_cores"] + s["wrk_cores"] for s in result["steps"])
    if client_peak >= 0.85 * client_cpus:
        lines.append(
            f"haproxy and wrk used up to {client_peak:.2f} of their {client_cpus} core(s): the "
            "client side was near its limit too, so the highest figures are a lower bound."
        )
    lines.append(
        "What limits the gain here is cores per replica, not inscale: a replica is a process "
        "that needs its own core (ONNX Runtime sizes its threads to the cores it may use). On "
        "a cluster, give each replica its own CPU (requests = limits) and run the same ramp."
    )
    return lines


def _rows(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(result: dict[str, Any]) -> list[str]:
    settings, steps = result["settings"], result["steps"]
    best, counts = peaks(steps), sorted({s["replicas"] for s in steps})
    base = best[counts[0]]["ok_per_s"]
    lines = [
        "| replicas | cores per replica | peak ok req/s | at concurrency | p99 there | gain "
        "| rows per model run | replicas' cores used | haproxy + wrk cores | other work (cores) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for count in counts:
        step = best[count]
        lines.append(
            f"| {count} | {cores_per_replica(count, settings):.2f} | "
            f"{step['ok_per_s']:,.0f} | {step['concurrency']} | {step['p99_ms']:.1f} ms | "
            f"{step['ok_per_s'] / base:.2f}x | {_rows(step.get('mean_batch_rows'))} | "
            f"{step['server_cores']:.2f} | "
            f"{step['haproxy_cores'] + step['wrk_cores']:.2f} | {step['other_cores']:.2f} |"
        )
    lines += ["", "Every step, successful req/s (p99 ms):", ""]
    lines.append("| concurrency | " + " | ".join(f"{c} replica(s)" for c in counts) + " |")
    lines.append("| ---: |" + " ---: |" * len(counts))
    for conc in settings["concurrency"]:
        cells = []
        for count in counts:
            step = next(s for s in steps if s["replicas"] == count and s["concurrency"] == conc)
            errors = f", {step['errors']} errors" if step["errors"] else ""
            cells.append(f"{step['ok_per_s']:,.0f} ({step['p99_ms']:.1f}{errors})")
        lines.append(f"| {conc} | " + " | ".join(cells) + " |")
    return lines


def plot(result: dict[str, Any], path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.4), dpi=90, layout="constrained")
    for count in sorted({s["replicas"] for s in result["steps"]}):
        steps = [s for s in result["steps"] if s["replicas"] == count]
        conc = [s["concurrency"] for s in steps]
        label = f"{count} replica{'s' if count > 1 else ''}"
        left.plot(conc, [s["ok_per_s"] for s in steps], "o-", label=label)
        right.plot(conc, [s["p99_ms"] for s in steps], "o-", label=label)
    for axes, title, unit in ((left, "Throughput", "requests / s"), (right, "p99 latency", "ms")):
        axes.set_title(title, fontsize=11)
        axes.set_xlabel("concurrent connections (wrk)")
        axes.set_ylabel(unit)
        axes.set_xscale("log", base=2)
        axes.set_xticks(result["settings"]["concurrency"])
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.minorticks_off()
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.savefig(path)
    plt.close(figure)


def write_outputs(result: dict[str, Any], run_dir: Path) -> None:
    (run_dir / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, run_dir / "scaling.png")
    settings = result["settings"]
    text = [
        f"# Horizontal scaling on {settings['nproc']} cores: {settings['model']}, "
        f"{settings['rows']} row(s) per request, {settings['step_seconds']} s per step",
        "",
        *table(result),
        "",
        f"A step that other work on the machine disturbed (over {settings['max_other_cores']:g} "
        f"cores) was repeated up to {settings['retries']} times; the least disturbed attempt "
        "is kept.",
        "",
        *limits(result),
        "",
        "![scaling](scaling.png)",
    ]
    (run_dir / "scaling.md").write_text("\n".join(text) + "\n")
    print(f"{run_dir / 'scaling.md'} ({os.path.getsize(run_dir / 'scaling.png')} byte plot)")
