"""The profile's human-readable output: report.md, results.csv and the PNG plots.

Everything here is derived from the results dict (the shape of results.json, which the
profile command writes itself, with config.yaml): the best and default configs, each trial's
best level and the frontier are read from it, never recomputed, so the report and the JSON
cannot disagree.
"""

import csv
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inscale.profile import plots
from inscale.profile.plots import plain_number as _plain
from inscale.profile.space import KNOBS

REPORT = "report.md"
CSV = "results.csv"
_LEVEL_COLUMNS = ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "requests", "errors")
_METRIC_COLUMNS = ("queue_ms", "compute_ms", "rows_per_run")


@dataclass(frozen=True)
class Plot:
    file: str
    draw: Callable[[dict[str, Any], Path], bool]
    title: str
    read: str  # one sentence: what a reader should take from the plot
    missing: str  # why it can be empty


PLOTS = (
    Plot(
        "frontier.png",
        plots.frontier_plot,
        "Throughput against p99, every config and concurrency",
        "Each point is one config at one concurrency (hollow: outside the objective); the black "
        "steps are the Pareto frontier, the most throughput any config reached for a p99 you "
        "read off the x axis, and only points left of the red line meet the SLO.",
        "no trial measured any level",
    ),
    Plot(
        "best_vs_concurrency.png",
        plots.best_plot,
        "The best config against concurrency, beside the default",
        "Throughput levels off at the knee while p99 keeps rising: past it, more concurrency "
        "only adds queueing; the star is the level the best config is reported at.",
        "neither the best nor the default config measured any level",
    ),
    Plot(
        "rows_per_run.png",
        plots.rows_plot,
        "Rows per model run against load",
        "How the batcher responds to load: a line flat at 1 means requests never met in the "
        "queue, and a line reaching its dotted max_batch_size means batches are full.",
        "the server reported no rows per run",
    ),
    Plot(
        "memory.png",
        plots.memory_plot,
        "Server memory against model instances",
        "The slope is what one more model instance costs in resident memory; every worker "
        "process adds a whole server on top.",
        "no trial's memory was measured",
    ),
    Plot(
        "compute_scaling.png",
        plots.compute_plot,
        "Compute time per run against rows per run",
        "The model's own scaling curve: the further below the dotted proportional line, the "
        "less each row costs in a bigger batch; more intra-op threads lower the curve only "
        "where cores are free for them.",
        "the server reported no compute time per run",
    ),
)


def write_report(folder: Path, results: dict[str, Any]) -> list[Path]:
    """Write report.md, results.csv and the plots into `folder`; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / CSV]
    write_csv(written[0], results)
    drawn: dict[str, bool] = {}
    if importlib.util.find_spec("matplotlib") is not None:
        for plot in PLOTS:
            drawn[plot.file] = plot.draw(results, folder / plot.file)
            if drawn[plot.file]:
                written.append(folder / plot.file)
    (folder / REPORT).write_text(markdown(results, drawn, plotting=bool(drawn) or not PLOTS))
    return [folder / REPORT, *written]


def write_csv(path: Path, results: dict[str, Any]) -> None:
    """One row per trial and concurrency level; failed trials have no levels and no rows."""
    knobs = _knobs(results)
    on_frontier = {(p["trial"], p["concurrency"]) for p in results.get("frontier") or []}
    header = ["trial", *knobs, "concurrency", *_LEVEL_COLUMNS, *_METRIC_COLUMNS, "rss_mb"]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*header, "within_slo", "on_frontier"])
        for trial in results.get("trials") or []:
            for level in trial["levels"]:
                row = [trial["id"], *(trial["config"].get(k) for k in knobs)]
                row += [level["concurrency"], *(level.get(c) for c in _LEVEL_COLUMNS)]
                row += [level.get(c) for c in _METRIC_COLUMNS] + [trial.get("rss_mb")]
                flags = (level["within_slo"], (trial["id"], level["concurrency"]) in on_frontier)
                writer.writerow(
                    ["" if v is None else v for v in row] + [str(f).lower() for f in flags]
                )


def markdown(results: dict[str, Any], drawn: dict[str, bool], plotting: bool = True) -> str:
    """The report's text; `drawn` says which plot files exist (file name -> drawn), and
    `plotting` whether matplotlib was there to draw them (a server image has no plots)."""
    trials = results.get("trials") or []
    lines = [f"# Profile of `{results['model']}` version {results['version']}", ""]
    lines += [*_setting(results), "", "## Answer", "", _answer(results), ""]
    if trials:
        lines += ["## Trials", "", _trials_table(results), ""]
    if results.get("frontier"):
        lines += ["## Pareto frontier (throughput against p99)", ""]
        lines += [_frontier_table(results), ""]
    lines += ["## Plots", ""]
    if not plotting:
        lines += ["Not drawn: matplotlib is not installed (`pip install 'inscale[profile]'`).", ""]
    for plot in PLOTS if plotting else ():
        lines += [f"### {plot.title}", ""]
        if drawn.get(plot.file):
            lines += [f"![{plot.title}]({plot.file})", "", plot.read, ""]
        else:
            lines += [f"Not drawn: {plot.missing}.", ""]
    failed = [t for t in trials if t["status"] != "ok"]
    if failed:
        lines += ["## Failed trials", ""]
        for trial in failed:
            lines += [f"Trial {trial['id']} ({_config(trial['config'], results)}):", ""]
            lines += ["```text", str(trial.get("error") or "no error text").rstrip(), "```", ""]
    return "\n".join(lines)


def _setting(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    load = machine.get("load_cores") or []
    space = results.get("space") or {}
    trials = results.get("trials") or []
    failed = sum(t["status"] != "ok" for t in trials)
    planned = math.prod(len(v) for v in space.values()) if space else 0
    search = f"{results['strategy']}, {len(trials)} trials run"
    if results["strategy"] == "grid" and planned:
        search += f" of {planned} configs"
    search += f" ({failed} failed)" if failed else ""
    levels = ", ".join(str(c) for c in results.get("concurrency") or [])
    stopped = {
        "done": "every planned trial ran",
        "budget": "stopped at the budget; the best is the best found so far",
        "interrupted": "interrupted; the best is the best found so far",
    }.get(results["stopped"], str(results["stopped"]))
    rows_each = int(results["rows_per_request"])
    cpu = machine.get("cpu_model") or "unknown CPU"
    shared = "the same cores (shared)"
    rows = [
        ("model file", f"`{results.get('model_file', '')}`"),
        ("machine", f"{machine['cpus']} CPUs, {cpu}, {_mb(machine.get('memory_total_mb'))} MB"),
        ("cores", f"server on {_cores(machine.get('server_cores') or [])}, "
                  f"load generator on {_cores(load) if load else shared}"),
        ("objective", f"{_slo(results)} (client side), errors ≤ 0.1% of requests"),
        ("requests", f"{results['protocol']}, {rows_each} row{'s' if rows_each != 1 else ''} each"),
        ("search", f"{search}; {_plain(results['trial_s'])} s per level at concurrency {levels}"),
        ("space", "; ".join(f"{k}: {', '.join(map(_plain, v))}" for k, v in space.items())),
        ("time", f"{results['elapsed_s']:.0f} s of a {results['budget_s']:.0f} s budget; "
                 f"{stopped}"),
        ("made", f"{results.get('made_at', '')} by inscale {results.get('inscale_version', '')}"),
    ]  # fmt: skip
    return ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)]


def _answer(results: dict[str, Any]) -> str:
    trials = results.get("trials") or []
    measured = plots.ok_trials(results)
    best, default = results.get("best"), results.get("default")
    slo = _slo(results)
    if not measured:
        why = "every trial failed (see Failed trials)" if trials else "no trial ran"
        return f"Nothing was measured: {why}, so there is no best config."
    if best is None:
        lowest, trial = min(
            ((lv, t) for t in measured for lv in t["levels"]), key=lambda p: p[0]["p99_ms"]
        )
        return (
            f"No config met the objective ({slo}) at any concurrency tried. The lowest p99 "
            f"measured was {_ms(lowest['p99_ms'])} ms (trial {trial['id']} at concurrency "
            f"{lowest['concurrency']}): loosen `--slo-p99-ms` or give the server more cores."
        )
    if default is not None and default["trial"] == best["trial"]:
        sweep_best = results.get("sweep_best")
        if sweep_best and sweep_best["trial"] != best["trial"]:
            return (
                f"**The default config stays the answer**: {_point(best, results)}. In the "
                f"sweep trial {sweep_best['trial']} read higher ({_rps(sweep_best['rps'])} "
                f"req/s), but not when both ran side by side.{_confirmed(results)}"
            )
        return (
            f"**The default config was the best found**: {_point(best, results)}. "
            f"No other config tried served more under the objective ({slo})."
        )
    found = f"The best config found under the objective ({slo}) is {_point(best, results)}."
    if default is None:
        first = next((t for t in trials if t.get("is_default")), None)
        how = "failed" if first is not None and first["status"] != "ok" else (
            "met the objective at no concurrency tried"
        )  # fmt: skip
        return f"{found} The default config {how}, so there is no ratio to it."
    ratio = best["rps"] / default["rps"]
    changes = ", ".join(
        f"{k} {_plain(default['config'][k])} → {_plain(best['config'][k])}"
        for k in _knobs(results)
        if default["config"].get(k) != best["config"].get(k)
    )
    return (
        f"{found} That is **{ratio:.2f}x the default**, {_point(default, results)}. "
        f"It changes {changes}.{_confirmed(results)}"
    )


def _confirmed(results: dict[str, Any]) -> str:
    """The side-by-side check's verdict, which weighs more than two runs minutes apart."""
    check = results.get("confirmation")
    if not check:
        return ""
    if check.get("ratio") is None:
        return f" The side-by-side check did not complete: {check.get('error', 'no rounds')}."
    ratio = check["ratio"]
    verdict = (
        "the gain holds"
        if ratio >= 1.05
        else "within the noise of short runs: the default is as good"
        if ratio > 0.95
        else "the default was faster this time: the sweep's gain was noise"
    )
    return (
        f" Measured again side by side ({len(check['rounds'])} interleaved rounds at "
        f"concurrency {check['concurrency']}): {_rps(check['best_rps'])} against "
        f"{_rps(check['default_rps'])} req/s, **{ratio:.2f}x** (median of the rounds' "
        f"ratios): {verdict}."
    )


def _point(point: dict[str, Any], results: dict[str, Any]) -> str:
    rss = f", {_mb(point['rss_mb'])} MiB resident" if point.get("rss_mb") is not None else ""
    return (
        f"trial {point['trial']} ({_config(point['config'], results)}): "
        f"{_rps(point['rps'])} requests/s at p99 {_ms(point['p99_ms'])} ms "
        f"(concurrency {point['concurrency']}{rss})"
    )


def _trials_table(results: dict[str, Any]) -> str:
    knobs = _knobs(results)
    best = results.get("best")

    def order(trial: dict[str, Any]) -> tuple[int, float, int]:
        rank = 0 if trial.get("best") else 1 if trial["status"] == "ok" else 2
        return rank, -(trial.get("best") or {}).get("rps", 0.0), trial["id"]

    head = ["trial", *knobs, "best req/s", "its p99 ms", "at concurrency", "RSS MiB", "status"]
    lines = [_row(head), _row(["---"] * len(head))]
    for trial in sorted(results.get("trials") or [], key=order):
        top = trial.get("best")
        name = f"{trial['id']} (default)" if trial.get("is_default") else str(trial["id"])
        if trial["status"] != "ok":
            status = "failed"
        elif top is None:
            status = "no level within SLO"
        else:
            status = "**best**" if best and best["trial"] == trial["id"] else "ok"
        cells = [name, *(_plain(trial["config"].get(k)) for k in knobs)]
        if top is None:
            cells += ["—", "—", "—"]
        else:
            cells += [_rps(top["rps"]), _ms(top["p99_ms"]), str(top["concurrency"])]
        lines.append(_row([*cells, _mb(trial.get("rss_mb")), status]))
    return "\n".join(lines)


def _frontier_table(results: dict[str, Any]) -> str:
    by_id = {t["id"]: t for t in results.get("trials") or []}
    head = ["trial", "config", "concurrency", "req/s", "p99 ms", "within SLO"]
    lines = [_row(head), _row(["---"] * len(head))]
    for point in sorted(results["frontier"], key=lambda p: p["p99_ms"]):
        trial = by_id.get(point["trial"], {"config": {}, "levels": []})
        inside = any(
            lv["concurrency"] == point["concurrency"] and lv["within_slo"] for lv in trial["levels"]
        )
        label = plots.config_label(trial["config"], plots.varied_knobs(results))
        cells = [str(point["trial"]), label, str(point["concurrency"]), _rps(point["rps"])]
        lines.append(_row([*cells, _ms(point["p99_ms"]), "yes" if inside else "no"]))
    return "\n".join(lines)


def _knobs(results: dict[str, Any]) -> list[str]:
    """The five knobs in their usual order, then any other the space names."""
    return [*KNOBS, *(k for k in results.get("space") or {} if k not in KNOBS)]


def _config(config: dict[str, Any], results: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_plain(config[k])}" for k in _knobs(results) if k in config)


def _slo(results: dict[str, Any]) -> str:
    return f"p99 ≤ {_plain(results['slo_p99_ms'])} ms"


def _cores(cores: list[int]) -> str:
    """[0, 1, 2, 5] as `0-2,5`, the form `--cores` takes."""
    runs: list[list[int]] = []
    for core in sorted(cores):
        if runs and core == runs[-1][-1] + 1:
            runs[-1].append(core)
        else:
            runs.append([core])
    text = ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
    return f"core{'s' if len(cores) > 1 else ''} {text}" if cores else "unpinned cores"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _rps(value: float) -> str:
    return f"{value:,.0f}"


def _ms(value: float) -> str:
    """A measured time with the decimals that matter: 0.95, 12.1, 250."""
    value = float(value)
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _mb(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"
