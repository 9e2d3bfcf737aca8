"""Render the overview dashboard to a PNG from a real load run, with matplotlib.

Grafana cannot be installed here, so this draws the same panels (same titles, queries, units
and layout) from Prometheus's answers to the dashboard's own queries. It starts inscale on the
bundled models, Debian's prometheus with the shipped rules, and drives a rising load with wrk
(plus a trickle of bad requests), then queries the whole run and draws it.

    pip install -e '.[dev]'          # matplotlib is among the dev tools
    .venv/bin/python -m loadtests.render_dashboard --out docs/dashboard.png

Needs `prometheus` and `wrk` on PATH (Debian packages). Takes about `--duration` seconds.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import matplotlib.pyplot as plt  # headless here: matplotlib picks its Agg backend itself
from matplotlib.axes import Axes
from matplotlib.colors import PowerNorm
from matplotlib.ticker import FuncFormatter
from PIL import Image  # matplotlib's own dependency

from loadtests.harness import wrk
from loadtests.harness.processes import ROOT
from loadtests.harness.prometheus import prometheus
from loadtests.harness.server import inscale_server

DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "inscale-overview.json"
SAMPLE = ROOT / "service" / "inscale" / "bundled_models" / "sample_input.json"
STAGES = (1, 4, 16, 48)  # wrk connections, rising, each for an equal part of the run
BG, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#96d98d"]


def drive_load(url: str, seconds: int, workdir: Path) -> None:
    """Rising wrk load on digits-wide and digits, and a trickle of failures meanwhile."""
    rows = json.loads(SAMPLE.read_text())["inputs"]
    bodies = {}
    for model in ("digits-wide", "digits"):
        path = workdir / f"{model}.json"
        path.write_text(json.dumps({"model": model, "inputs": rows[:1]}))
        bodies[model] = path
    stop = threading.Event()

    def failures() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            while not stop.wait(0.05):
                client.post("/predict", json={"model": "digits", "inputs": [[1, 2]]})
                client.get("/no/such/route")
                client.post(
                    "/predict", json={"model": "digits", "timeout_ms": 0.001, "inputs": rows[:1]}
                )

    trickle = threading.Thread(target=failures)
    trickle.start()
    try:
        step = max(2, seconds // len(STAGES))
        for connections in STAGES:
            wrks = [
                subprocess.Popen(
                    [
                        "wrk",
                        "-t1",
                        f"-c{connections}",
                        f"-d{step}s",
                        "-s",
                        str(wrk.SCRIPT),
                        url + "/predict",
                    ],
                    env={**os.environ, "WRK_BODY_FILE": str(body)},
                    stdout=subprocess.DEVNULL,
                )
                for body in bodies.values()
            ]
            for proc in wrks:
                proc.wait()
            print(f"  load: {connections} connections per model for {step} s", file=sys.stderr)
    finally:
        stop.set()
        trickle.join()


# -- drawing ------------------------------------------------------------------------------


def fmt_value(value: float, unit: str) -> str:
    if unit == "s":
        for scale, suffix in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= scale or scale == 1e-6:
                return f"{value / scale:.3g} {suffix}"
    if unit == "bytes":
        for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value:.0f} B"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "reqps":
        return f"{short(value)} req/s"
    if unit.startswith("suffix:"):
        return f"{short(value)} {unit.split(':', 1)[1].strip()}"
    return short(value)


def short(value: float) -> str:
    """Like Grafana's "short" unit: 1.2k rather than 1.2e+03."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def clock(seconds: float, _: object = None) -> str:
    """Minutes:seconds since the load began, for the time axes."""
    sign = "-" if seconds < 0 else ""
    seconds = abs(round(seconds))
    return f"{sign}{seconds // 60}:{seconds % 60:02d}"


def legend(template: str, labels: dict[str, str]) -> str:
    for name, value in labels.items():
        template = template.replace("{{" + name + "}}", value)
    return template


def query_range(
    prom: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    for name, value in {"$model": ".*", "$instance": ".*", "$__rate_interval": "15s"}.items():
        expr = expr.replace(name, value)
    params: dict[str, str | float] = {"query": expr, "start": start, "end": end, "step": step}
    body = httpx.get(f"{prom}/api/v1/query_range", params=params, timeout=30).json()
    if body["status"] != "success":
        raise RuntimeError(f"{expr}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def style(ax: Axes, title: str) -> None:
    ax.set_facecolor(PANEL)
    ax.set_title(title, color=TEXT, fontsize=9, loc="left", fontweight="bold")
    ax.tick_params(colors=TEXT, labelsize=7)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.grid(color=GRID, linewidth=0.5)


def draw_timeseries(
    ax: Axes, panel: dict[str, Any], series: list[tuple[str, list[Any]]], start: float
) -> None:
    unit = panel["fieldConfig"]["defaults"]["unit"]
    stacked = panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    base = None
    for i, (label, values) in enumerate(series):
        xs = [float(t) - start for t, _ in values]
        ys = [float(v) if v not in ("NaN", "+Inf", "-Inf") else float("nan") for _, v in values]
        color = COLORS[i % len(COLORS)]
        if stacked:
            lower = [0.0] * len(ys) if base is None or len(base) != len(ys) else base
            upper = [lo + (0.0 if y != y else y) for lo, y in zip(lower, ys, strict=True)]
            ax.fill_between(xs, lower, upper, color=color, alpha=0.35, linewidth=0)
            ax.plot(xs, upper, color=color, linewidth=1, label=label)
            base = upper
        else:
            ax.plot(xs, ys, color=color, linewidth=1.2, label=label)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_value(v, unit)))
    ax.set_ylim(0, max(ax.get_ylim()[1], 1e-9) * 1.25)  # headroom for the legend
    ax.xaxis.set_major_formatter(FuncFormatter(clock))
    if series:
        ax.legend(
            fontsize=6.5, loc="upper left", facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT, ncol=3
        )
    else:
        ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=ax.transAxes)


def draw_heatmap(ax: Axes, result: list[dict[str, Any]], start: float) -> None:
    buckets = sorted(result, key=lambda r: float(r["metric"]["le"]))
    if not buckets:
        ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=ax.transAxes)
        return
    times = [float(t) - start for t, _ in buckets[0]["values"]]
    previous = [0.0] * len(times)
    grid = []
    for bucket in buckets:  # cumulative buckets -> counts per bucket
        values = [float(v) for _, v in bucket["values"]][: len(times)]
        values += [0.0] * (len(times) - len(values))
        grid.append([max(0.0, v - p) for v, p in zip(values, previous, strict=True)])
        previous = values
    labels = [b["metric"]["le"].replace(".0", "") for b in buckets]
    ax.imshow(
        grid,
        norm=PowerNorm(gamma=0.35),  # bigger batches mean fewer runs: keep them visible
        aspect="auto",
        origin="lower",
        cmap="inferno",
        interpolation="nearest",
        extent=(times[0], times[-1], -0.5, len(labels) - 0.5),
    )
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylabel("rows per run (≤)", color=TEXT, fontsize=7)
    ax.xaxis.set_major_formatter(FuncFormatter(clock))


def draw_stat(ax: Axes, panel: dict[str, Any], series: list[tuple[str, list[Any]]]) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    unit = panel["fieldConfig"]["defaults"]["unit"]
    for i, (label, values) in enumerate(series[:4]):
        last = float(values[-1][1])
        x = (i + 0.5) / max(1, min(4, len(series)))
        ax.text(
            x,
            0.55,
            fmt_value(last, unit),
            color=COLORS[i % len(COLORS)],
            fontsize=15,
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontweight="bold",
        )
        ax.text(x, 0.2, label, color=TEXT, fontsize=7, ha="center", transform=ax.transAxes)


def render(prom: str, start: float, end: float, out: Path) -> None:
    board = json.loads(DASHBOARD.read_text())
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    unit_h = 0.36
    fig = plt.figure(figsize=(18, height * unit_h + 1.2), facecolor=BG)
    top = 1 - 0.9 / (height * unit_h + 1.2)
    fig.text(
        0.01, top + 0.35 * (1 - top), board["title"], color=TEXT, fontsize=15, fontweight="bold"
    )
    fig.text(
        0.99, top + 0.35 * (1 - top),
        "Drawn with matplotlib from Prometheus query results of a real load run (Grafana is not "
        "installable here); same panels, queries and units as the Grafana dashboard.",
        color="#8e8e8e", fontsize=8, ha="right",
    )  # fmt: skip
    step = max(1.0, (end - start) / 300)
    for panel in board["panels"]:
        pos = panel["gridPos"]
        left, width = pos["x"] / 24 + 0.004, pos["w"] / 24 - 0.008
        bottom = top * (1 - (pos["y"] + pos["h"]) / height) + 0.012
        h = top * pos["h"] / height - (0.006 if panel["type"] == "row" else 0.03)
        if panel["type"] == "row":
            fig.text(
                left, bottom + h / 2, panel["title"], color=TEXT, fontsize=11, fontweight="bold"
            )
            continue
        ax = fig.add_axes((left + 0.034, bottom, width - 0.038, h))
        style(ax, panel["title"])
        results = []
        for target in panel["targets"]:
            for r in query_range(prom, target["expr"], start, end, step):
                results.append((legend(target["legendFormat"], r["metric"]), r["values"], r))
        if panel["type"] == "heatmap":
            draw_heatmap(ax, [r for _, _, r in results], start)
        elif panel["type"] == "stat":
            draw_stat(ax, panel, [(label, values) for label, values, _ in results])
        else:
            draw_timeseries(ax, panel, [(label, values) for label, values, _ in results], start)
    fig.savefig(out, dpi=72, facecolor=BG)
    plt.close(fig)
    shrink(out)


def shrink(path: Path) -> None:
    """Quantize to 128 colours: a dashboard has few, and the PNG gets several times smaller."""
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--duration", type=int, default=160, help="seconds of load")
    args = parser.parse_args()
    for tool in ("prometheus", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install --no-install-recommends {tool})")
            return 2
    with tempfile.TemporaryDirectory(prefix="inscale-render-") as tmp:
        workdir = Path(tmp)
        with (
            inscale_server(workdir / "inscale" / "server.log") as server,
            prometheus(workdir / "prometheus", [server.url.removeprefix("http://")]) as prom_proc,
        ):
            url, prom = server.url, prom_proc.url
            time.sleep(12)  # Prometheus's first scrape
            start = time.time()
            drive_load(url, args.duration, workdir)
            time.sleep(5)  # the last scrapes and rule runs
            end = time.time()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            render(prom, start - 10, end, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
