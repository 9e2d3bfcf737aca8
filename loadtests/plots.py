"""The report's plots: small PNGs (about 30 KB each) that read well in a README."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from loadtests.hpa import Decision, Policy
from loadtests.levels import Level

SIZE = (6.0, 3.4)
DPI = 90


def _figure(title: str) -> tuple[Figure, Axes]:
    figure, axes = plt.subplots(figsize=SIZE, dpi=DPI, layout="constrained")
    axes.set_title(title, fontsize=11)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path)
    plt.close(figure)


def throughput(levels: Sequence[Level], path: Path) -> None:
    figure, axes = _figure("Throughput against offered load")
    users = [level.users for level in levels]
    axes.plot(users, [lv.throughput for lv in levels], "o-", label="all answers")
    axes.plot(users, [lv.ok_throughput for lv in levels], "s--", label="successful")
    axes.set_xlabel("concurrent users")
    axes.set_ylabel("answers / s")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8)
    _save(figure, path)


def latency(levels: Sequence[Level], p99_target_ms: float, path: Path) -> None:
    figure, axes = _figure("Latency against offered load (successful requests)")
    users = [level.users for level in levels]
    for q, style in ((50, "o-"), (95, "s-"), (99, "^-")):
        axes.plot(users, [lv.percentile(q) for lv in levels], style, label=f"p{q}")
    axes.axhline(p99_target_ms, color="red", linestyle=":", label="p99 target")
    axes.set_xlabel("concurrent users")
    axes.set_ylabel("ms")
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8)
    _save(figure, path)


def batch_size(levels: Sequence[Level], path: Path) -> None:
    figure, axes = _figure("Batch size against offered load")
    axes.plot([lv.users for lv in levels], [lv.mean_batch_rows for lv in levels], "o-")
    axes.set_xlabel("concurrent users")
    axes.set_ylabel("mean rows per model run")
    axes.set_ylim(bottom=0)
    _save(figure, path)


def memory(series: dict[str, list[tuple[float, float]]], path: Path) -> None:
    figure, axes = _figure("Server resident memory")
    for name, points in series.items():
        axes.plot([t for t, _ in points], [m for _, m in points], label=name)
    if len(series) > 1:
        axes.legend(fontsize=7)
    axes.set_xlabel("seconds")
    axes.set_ylabel("MiB")
    axes.set_ylim(bottom=0)
    _save(figure, path)


def timeline(points: Sequence[tuple[float, int, float, float]], target: float, path: Path) -> None:
    figure, axes = _figure("Each second of the run")
    seconds = [p[0] for p in points]
    lines = axes.plot(seconds, [p[2] for p in points], color="tab:blue", label="answers/s")
    axes.set_xlabel("seconds")
    axes.set_ylabel("answers / s", color="tab:blue")
    axes.set_ylim(bottom=0)
    right = axes.twinx()
    lines += right.plot(seconds, [p[3] for p in points], color="tab:red", label="p99 ms")
    right.axhline(target, color="tab:red", linestyle=":")
    right.set_ylabel("p99 ms (dotted: target)", color="tab:red")
    right.set_ylim(bottom=0)
    users = axes.twinx()  # the load, on its own hidden scale
    peak = max((p[1] for p in points), default=0)
    lines += users.step(
        seconds, [p[1] for p in points], where="post", color="gray", alpha=0.5,
        label=f"users (peak {peak})",
    )  # fmt: skip
    users.set_yticks([])
    users.set_ylim(bottom=0)
    axes.legend(handles=lines, fontsize=7, loc="upper left")
    _save(figure, path)


def hpa(decisions: Sequence[Decision], policy: Policy, path: Path) -> None:
    figure, axes = _figure("Autoscaling replay")
    times = [d.time for d in decisions]
    axes.step(times, [d.replicas for d in decisions], where="post", label="replicas")
    axes.set_xlabel("seconds")
    axes.set_ylabel("replicas")
    axes.set_ylim(0, policy.max_replicas + 1)
    right = axes.twinx()
    right.plot(times, [d.total / d.replicas_before for d in decisions], "o:", color="tab:orange")
    right.axhline(policy.target, color="tab:orange", linestyle="--", alpha=0.6)
    right.set_ylabel("in flight per pod (dashed: target)", color="tab:orange")
    right.set_ylim(bottom=0)
    _save(figure, path)
