"""A process's memory from /proc, and whether it trends upward over a run.

Read from outside the process (`/proc/PID/status`), so measuring costs the server nothing and
needs no debug hook in it. Resident memory is split the way the kernel counts it: anonymous
pages (heaps, arenas, thread stacks: where a leak shows) and file pages (mapped shared
libraries and the model file, which the kernel may drop and re-read, so they move for reasons
that are not ours).
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_FIELDS = {"VmRSS": "rss_kb", "RssAnon": "anon_kb", "RssFile": "file_kb", "VmHWM": "peak_kb"}


@dataclass(frozen=True)
class Memory:
    """Resident memory of one process at one moment, in kB as the kernel reports it."""

    rss_kb: int
    anon_kb: int
    file_kb: int
    peak_kb: int  # the highest resident size the process has had so far
    threads: int

    @property
    def rss_mb(self) -> float:
        return self.rss_kb / 1024

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read(pid: int) -> Memory:
    """The process's resident memory now; fails with a clear message if it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        raise RuntimeError(f"process {pid} has exited: no /proc/{pid}/status") from None
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in _FIELDS:
            found[_FIELDS[key]] = int(value.split()[0])
        elif key == "Threads":
            found["threads"] = int(value)
    missing = set(_FIELDS.values()) - set(found)
    if missing:
        raise RuntimeError(f"/proc/{pid}/status has no {sorted(missing)} (not Linux?)")
    return Memory(**found)


@dataclass(frozen=True)
class Trend:
    """How a series of (seconds, MB) points moved between two moments of a run."""

    start_s: float
    end_s: float
    start_mb: float  # the sample at (or first after) start_s
    end_mb: float  # the last sample
    drift_pct: float  # (end - start) / start, in percent, from the samples themselves
    slope_mb_per_min: float  # least-squares line through every sample in the window
    fitted_drift_pct: float  # the line's rise over the window, relative to start_mb
    samples: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (units of y per unit of x); 0 for fewer than 2 x's."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def trend(points: Sequence[tuple[float, float]], from_s: float) -> Trend:
    """The trend of (seconds, MB) points from `from_s` to the last point.

    Drift from the samples alone can be moved by one unlucky sample at either end; the fitted
    slope uses every sample in the window, so both are reported and a caller gates on either.
    """
    window = [(t, mb) for t, mb in points if t >= from_s]
    if len(window) < 2:
        raise ValueError(
            f"fewer than 2 samples after {from_s:g} s ({len(points)} in all): "
            "run longer or sample more often"
        )
    (t0, first), (t1, last) = window[0], window[-1]
    per_s = slope(window)
    return Trend(
        start_s=t0,
        end_s=t1,
        start_mb=first,
        end_mb=last,
        drift_pct=(last - first) / first * 100,
        slope_mb_per_min=per_s * 60,
        fitted_drift_pct=per_s * (t1 - t0) / first * 100,
        samples=len(window),
    )
