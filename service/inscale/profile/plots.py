"""The profile report's PNG plots, drawn from a results dict (schema: results.json).

Each function draws one plot into `path` and returns True, or returns False and writes
nothing when the results hold no data for it (every trial failed, no metrics), so the report
can say the plot was skipped. matplotlib is imported inside the functions: it is an optional
dependency (the `profile` extra) and slow to import, and `inscale serve` never needs it.
Figures are built with `matplotlib.figure.Figure`, never pyplot, so no GUI backend is ever
chosen and no global figure state is left behind (the Agg renderer draws the PNG).
"""

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inscale.profile.space import KNOBS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SIZE = (7.0, 4.5)  # inches: 770 x 495 px at DPI
DPI = 110
_SHORT = {
    "max_batch_size": "batch",
    "max_queue_delay_ms": "delay",
    "instances": "inst",
    "intra_op_threads": "thr",
    "workers": "wrk",
}
# More trials than this and a legend entry each would cover the plot: a colour bar instead.
_MAX_LEGEND_TRIALS = 10
# A range wider than this ratio reads better on a log axis.
_WIDE = 20.0


def config_label(config: dict[str, Any], varied: Sequence[str] = KNOBS) -> str:
    """A short name for a config: the knobs that vary in the search, e.g. `batch=32 inst=2`."""
    return " ".join(f"{_SHORT.get(k, k)}={plain_number(config[k])}" for k in varied if k in config)


def varied_knobs(results: dict[str, Any]) -> list[str]:
    """The knobs with more than one value among the trials (all of them if none varies)."""
    trials = results.get("trials") or []
    knobs = [k for k in KNOBS if len({str(t["config"].get(k)) for t in trials}) > 1]
    return knobs or list(KNOBS)


def ok_trials(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials that ran and measured at least one level."""
    return [t for t in results.get("trials") or [] if t["status"] == "ok" and t["levels"]]


def frontier_plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput against p99 for every (trial, level), with the Pareto frontier and the SLO."""
    trials = ok_trials(results)
    if not trials:
        return False
    figure, axes = _figure("Throughput against p99 latency, every config and concurrency")
    colours = _trial_colours(trials)
    varied = varied_knobs(results)
    handles: list[Any] = []
    p99s = [lv["p99_ms"] for t in trials for lv in t["levels"]]
    for trial in trials:
        levels = trial["levels"]
        colour = colours[trial["id"]]
        (line,) = axes.plot(
            [lv["p99_ms"] for lv in levels],
            [lv["rps"] for lv in levels],
            "-",
            color=colour,
            alpha=0.45,
            linewidth=1,
            label=f"#{trial['id']} {config_label(trial['config'], varied)}",
        )
        handles.append(line)
        inside = [lv for lv in levels if lv["within_slo"]]
        outside = [lv for lv in levels if not lv["within_slo"]]
        axes.scatter([lv["p99_ms"] for lv in inside], [lv["rps"] for lv in inside], color=colour)
        axes.scatter(
            [lv["p99_ms"] for lv in outside],
            [lv["rps"] for lv in outside],
            facecolors="none",
            edgecolors=colour,
        )
    keys = _colour_key(figure, axes, trials, handles)
    frontier = sorted(results.get("frontier") or [], key=lambda p: p["p99_ms"])
    if frontier:
        xs = [p["p99_ms"] for p in frontier] + [max(p99s)]
        ys = [p["rps"] for p in frontier] + [frontier[-1]["rps"]]
        (step,) = axes.step(xs, ys, where="post", color="black", linewidth=1.5, label="frontier")
        axes.scatter(xs[:-1], ys[:-1], s=90, facecolors="none", edgecolors="black", zorder=3)
        keys.append(step)
    slo = float(results["slo_p99_ms"])
    keys.append(
        axes.axvline(slo, color="red", linestyle=":", label=f"SLO p99 {plain_number(slo)} ms")
    )
    _label_best_and_default(axes, results)
    if _wide(p99s, _WIDE):
        _log(axes, "x")
    axes.set_xlabel("p99 latency (ms, client side)")
    axes.set_ylabel("throughput (requests / s)")
    axes.set_ylim(bottom=0)
    _legend(figure, keys, "filled: within SLO, hollow: not")
    _save(figure, path)
    return True


def best_plot(results: dict[str, Any], path: Path) -> bool:
    """Throughput and p99 against concurrency for the best config, the default's beside it."""
    by_id = {t["id"]: t for t in ok_trials(results)}
    best = results.get("best")
    default = next((t for t in by_id.values() if t.get("is_default")), None)
    shown: list[tuple[dict[str, Any], str, str]] = []
    if best is not None and best["trial"] in by_id:
        same = default is not None and default["id"] == best["trial"]
        name = "best = default" if same else "best"
        shown.append((by_id[best["trial"]], f"{name} (#{best['trial']})", "-"))
    if default is not None and not any(t is default for t, _, _ in shown):
        shown.append((default, f"default (#{default['id']})", "--"))
    if not shown:
        return False
    figure = _blank()
    figure.suptitle("Throughput and p99 against concurrency", fontsize=11)
    top = figure.add_subplot(2, 1, 1)
    bottom = figure.add_subplot(2, 1, 2, sharex=top)
    top.grid(True, alpha=0.3)
    bottom.grid(True, alpha=0.3)
    slo = float(results["slo_p99_ms"])
    for trial, label, style in shown:
        levels = trial["levels"]
        concurrency = [lv["concurrency"] for lv in levels]
        top.plot(concurrency, [lv["rps"] for lv in levels], style, marker="o", label=label)
        bottom.plot(concurrency, [lv["p99_ms"] for lv in levels], style, marker="o", label=label)
    if best is not None:
        top.plot(best["concurrency"], best["rps"], "*", color="gold", markersize=14, mec="black")
        bottom.plot(best["concurrency"], best["p99_ms"], "*", color="gold", ms=14, mec="black")
    bottom.axhline(slo, color="red", linestyle=":", label=f"SLO {plain_number(slo)} ms")
    p99s = [lv["p99_ms"] for t, _, _ in shown for lv in t["levels"]]
    if _wide(p99s, _WIDE):
        _log(bottom, "y")
    _concurrency_axis(bottom, [lv["concurrency"] for t, _, _ in shown for lv in t["levels"]])
    top.tick_params(labelbottom=False)
    top.set_ylabel("requests / s")
    top.set_ylim(bottom=0)
    bottom.set_ylabel("p99 (ms)")
    bottom.set_xlabel("concurrent requests (client connections)")
    top.legend(fontsize=7, loc="best")
    bottom.legend(fontsize=7, loc="best")
    _save(figure, path)
    return True


def rows_plot(results: dict[str, Any], path: Path) -> bool:
    """Mean rows per model run against concurrency per trial: how the batcher responds."""
    trials = [t for t in ok_trials(results) if _values(t["levels"], "rows_per_run")]
    if not trials:
        return False
    figure, axes = _figure("Rows per model run against load (the batcher's response)")
    colours = _trial_colours(trials)
    varied = varied_knobs(results)
    handles: list[Any] = []
    every: list[float] = []
    for trial in trials:
        levels = [lv for lv in trial["levels"] if lv.get("rows_per_run") is not None]
        every += [lv["rows_per_run"] for lv in levels]
        (line,) = axes.plot(
            [lv["concurrency"] for lv in levels],
            [lv["rows_per_run"] for lv in levels],
            "o-",
            color=colours[trial["id"]],
            label=f"#{trial['id']} {config_label(trial['config'], varied)}",
        )
        handles.append(line)
    keys = _colour_key(figure, axes, trials, handles)
    for size in sorted({int(t["config"]["max_batch_size"]) for t in trials}):
        axes.axhline(size, color="gray", linestyle=":", linewidth=0.8)
    _concurrency_axis(axes, [lv["concurrency"] for t in trials for lv in t["levels"]])
    if _wide(every, 8):
        _log(axes, "y", base=2)
    else:
        axes.set_ylim(bottom=0)
    axes.set_xlabel("concurrent requests (client connections)")
    axes.set_ylabel("mean rows per model run")
    _legend(figure, keys, "dotted: max_batch_size values")
    _save(figure, path)
    return True


def memory_plot(results: dict[str, Any], path: Path) -> bool:
    """Resident memory of each config's server against instances, a marker per workers value."""
    trials = [t for t in results.get("trials") or [] if t.get("rss_mb") is not None]
    trials = [t for t in trials if t["status"] == "ok"]
    if not trials:
        return False
    figure, axes = _figure("Server memory against model instances")
    workers = sorted({int(t["config"]["workers"]) for t in trials})
    markers = "os^Dvp"
    for i, count in enumerate(workers):
        group = [t for t in trials if int(t["config"]["workers"]) == count]
        # Groups side by side around each instance count, so points of equal x stay apart.
        shift = (i - (len(workers) - 1) / 2) * 0.08
        axes.scatter(
            [int(t["config"]["instances"]) + shift for t in group],
            [t["rss_mb"] for t in group],
            marker=markers[i % len(markers)],
            s=45,
            alpha=0.75,
            label=f"{count} worker{'s' if count > 1 else ''}",
        )
    axes.set_xticks(sorted({int(t["config"]["instances"]) for t in trials}))
    axes.set_xlabel("model instances (sessions per worker)")
    axes.set_ylabel("resident memory, all server processes (MiB)")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8, loc="lower right")
    _save(figure, path)
    return True


def compute_plot(results: dict[str, Any], path: Path) -> bool:
    """Compute time per model run against rows per run, every level: the model's scaling."""
    points = [
        (int(t["config"]["intra_op_threads"]), lv["rows_per_run"], lv["compute_ms"])
        for t in ok_trials(results)
        for lv in t["levels"]
        # A level with no model run in its window (rows 0) has no cost per run to show.
        if (lv.get("rows_per_run") or 0) > 0 and lv.get("compute_ms") is not None
    ]
    if not points:
        return False
    figure, axes = _figure("Compute time per model run against rows per run")
    for threads in sorted({p[0] for p in points}):
        group = [p for p in points if p[0] == threads]
        axes.scatter(
            [p[1] for p in group],
            [p[2] for p in group],
            alpha=0.75,
            label=f"{threads} intra-op thread{'s' if threads > 1 else ''}",
        )
    rows = [p[1] for p in points]
    first = min(points, key=lambda p: p[1])
    # Cost in proportion to rows from the smallest batch: a curve below it is batching's gain.
    ends = [min(rows), max(rows)]
    proportional = [first[2] * r / first[1] for r in ends]
    axes.plot(ends, proportional, ":", color="gray", label="proportional to rows")
    if _wide(rows, _WIDE):
        _log(axes, "x")
        _log(axes, "y")
    else:
        axes.set_xlim(left=0)
        axes.set_ylim(bottom=0)
    axes.set_xlabel("mean rows per model run")
    axes.set_ylabel("mean compute time per run (ms)")
    axes.legend(fontsize=8, loc="upper left")
    _save(figure, path)
    return True


def _blank() -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=SIZE, dpi=DPI, layout="constrained")


def _figure(title: str) -> tuple["Figure", "Axes"]:
    figure = _blank()
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=11)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _save(figure: "Figure", path: Path) -> None:
    figure.savefig(path)


def _trial_colours(trials: Sequence[dict[str, Any]]) -> dict[int, Any]:
    """A colour per trial id, the same trial the same colour in every plot of one report."""
    from matplotlib import colormaps

    if len(trials) <= _MAX_LEGEND_TRIALS:
        return {t["id"]: colormaps["tab10"](i) for i, t in enumerate(trials)}
    ids = sorted(t["id"] for t in trials)
    span = max(ids[-1] - ids[0], 1)
    return {i: colormaps["viridis"]((i - ids[0]) / span) for i in ids}


def _colour_key(
    figure: "Figure", axes: "Axes", trials: Sequence[dict[str, Any]], handles: list[Any]
) -> list[Any]:
    """Legend entries for the trials, or a colour bar of trial ids when there are too many."""
    if len(trials) <= _MAX_LEGEND_TRIALS:
        return list(handles)
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    ids = [t["id"] for t in trials]
    scale = ScalarMappable(Normalize(min(ids), max(ids)), colormaps["viridis"])
    figure.colorbar(scale, ax=axes, label="trial id", pad=0.01)
    return []


def _legend(figure: "Figure", handles: list[Any], title: str) -> None:
    """A legend under the axes (never over the data), its title saying how to read marks."""
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncols=2,
        fontsize=7,
        title=title,
        title_fontsize=7,
    )


def _log(axes: "Axes", which: str, base: int = 10) -> None:
    """A log axis labelled in plain numbers (2, 5, 10, 20), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = axes.xaxis if which == "x" else axes.yaxis
    (axes.set_xscale if which == "x" else axes.set_yscale)("log", base=base)
    if base == 10:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def _label_best_and_default(axes: "Axes", results: dict[str, Any]) -> None:
    best, default = results.get("best"), results.get("default")
    marks: list[tuple[dict[str, Any], str, tuple[int, int]]] = []
    if best is not None:
        same = default is not None and default["trial"] == best["trial"]
        marks.append((best, f"best{' = default' if same else ''} #{best['trial']}", (-14, -24)))
    if default is not None and (best is None or default["trial"] != best["trial"]):
        marks.append((default, f"default #{default['trial']}", (12, -30)))
    for point, text, offset in marks:
        axes.annotate(
            text,
            xy=(point["p99_ms"], point["rps"]),
            xytext=offset,
            textcoords="offset points",
            ha="right" if offset[0] < 0 else "left",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.85},
            arrowprops={"arrowstyle": "->", "color": "black"},
        )


def _concurrency_axis(axes: "Axes", levels: Iterable[int]) -> None:
    """Concurrency on a base-2 log axis when it spans a wide range, a tick at each level."""
    ticks = sorted(set(levels))
    if ticks[-1] / max(ticks[0], 1) >= 8:
        _log(axes, "x", base=2)
    axes.set_xticks(ticks, [str(c) for c in ticks])
    axes.set_xticks([], minor=True)


def _wide(values: Sequence[float], ratio: float) -> bool:
    """True when the values span more than `ratio` and can go on a log axis (all above 0)."""
    return min(values) > 0 and max(values) / min(values) > ratio


def _values(levels: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [lv[key] for lv in levels if lv.get(key) is not None]


def plain_number(value: Any) -> str:
    """1.0 as `1`, 0.5 as `0.5`: knob values and thresholds as a person writes them."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
