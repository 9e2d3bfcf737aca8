"""A run's requests and server metrics, grouped by load level (the users the shape asked for).

Latency percentiles are exact (every request's response time from requests.csv, successful
requests only: a shed request answers fast and would flatter the tail). Server figures (rows
per model run, CPU, queue time) are deltas of its counters over the time spent at a level.
A level may be visited more than once (a spike returns to its base): its segments add up.
"""

import csv
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtests.server_metrics import Instant


@dataclass(frozen=True)
class Request:
    time: float
    name: str
    response_ms: float
    users: int
    failure: str  # empty when the request succeeded


@dataclass
class Level:
    users: int
    seconds: float = 0.0
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # successful requests only
    batch_rows_sum: float = 0.0
    batch_runs: float = 0.0
    cpu_seconds: float = 0.0
    metric_seconds: float = 0.0  # time covered by server metric samples

    @property
    def throughput(self) -> float:
        """Answers per second, failed ones included."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok_throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    @property
    def error_rate(self) -> float:
        return sum(self.failures.values()) / self.requests if self.requests else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else math.nan

    @property
    def mean_batch_rows(self) -> float:
        return self.batch_rows_sum / self.batch_runs if self.batch_runs else math.nan

    @property
    def server_cores(self) -> float:
        return self.cpu_seconds / self.metric_seconds if self.metric_seconds else math.nan


def read_requests(path: Path) -> list[Request]:
    with path.open(newline="") as source:
        rows = [
            Request(
                float(r["time"]),
                r["name"],
                float(r["response_time_ms"]),
                int(r["users"]),
                r["failure"],
            )
            for r in csv.DictReader(source)
        ]
    return sorted(rows, key=lambda r: r.time)  # a master writes workers' rows in batches


def segments(requests: Sequence[Request]) -> list[list[Request]]:
    """Runs of consecutive requests made at the same level."""
    runs: list[list[Request]] = []
    for request in requests:
        if runs and runs[-1][0].users == request.users:
            runs[-1].append(request)
        else:
            runs.append([request])
    return runs


Window = tuple[Instant, Instant]


def _window(instants: Sequence[Instant], start: float, end: float) -> Window | None:
    inside = [i for i in instants if start <= i.time <= end]
    return (inside[0], inside[-1]) if len(inside) >= 2 else None


def _delta(first: Instant, last: Instant, name: str, **match: str) -> float:
    before, after = first.total(name, **match), last.total(name, **match)
    return 0.0 if before is None or after is None else max(0.0, after - before)


def by_level(
    requests: Sequence[Request], instants: Sequence[Instant], model: str | None
) -> list[Level]:
    """One Level per distinct user count, lowest first."""
    levels: dict[int, Level] = {}
    match = {"model": model} if model else {}
    for run in segments(requests):
        level = levels.setdefault(run[0].users, Level(run[0].users))
        level.seconds += run[-1].time - run[0].time
        level.requests += len(run)
        for request in run:
            if request.failure:
                level.failures[request.failure] += 1
            else:
                level.latencies_ms.append(request.response_ms)
        window = _window(instants, run[0].time, run[-1].time)
        if window is not None:
            first, last = window
            level.batch_rows_sum += _delta(first, last, "inscale_batch_size_rows_sum", **match)
            level.batch_runs += _delta(first, last, "inscale_batch_size_rows_count", **match)
            level.cpu_seconds += _delta(first, last, "process_cpu_seconds_total")
            level.metric_seconds += last.time - first.time
    # A level shorter than a second is a shape's hand-over, not a measurement.
    return [levels[u] for u in sorted(levels) if u > 0 and levels[u].seconds >= 1.0]


def meets(level: Level, p99_target_ms: float, max_error_rate: float) -> bool:
    return level.percentile(99) <= p99_target_ms and level.error_rate <= max_error_rate


def knee(levels: Sequence[Level], p99_target_ms: float, max_error_rate: float) -> Level | None:
    """The highest level that meets the target: p99 of successful requests within it, and
    at most `max_error_rate` of the requests failed. The report lists any lower level that
    missed, which on a shared machine is usually other work at that moment."""
    met = [level for level in levels if meets(level, p99_target_ms, max_error_rate)]
    return met[-1] if met else None


def per_second(requests: Sequence[Request]) -> list[tuple[float, int, float, float]]:
    """(seconds since start, users, answers/s, p99 ms of successful requests) per second."""
    if not requests:
        return []
    start = requests[0].time
    bins: dict[int, list[Request]] = defaultdict(list)
    for request in requests:
        bins[int(request.time - start)].append(request)
    out = []
    for second in sorted(bins):
        ok = [r.response_ms for r in bins[second] if not r.failure]
        p99 = float(np.percentile(ok, 99)) if ok else math.nan
        out.append((float(second), bins[second][-1].users, float(len(bins[second])), p99))
    return out[:-1] if len(out) > 1 else out  # the last second is partial


def memory_series(instants: Sequence[Instant]) -> dict[str, list[tuple[float, float]]]:
    """Resident memory (MiB) over time (seconds since the first sample), one series per
    process (a Prometheus query may return several pods)."""
    if not instants:
        return {}
    start = instants[0].time
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for instant in instants:
        for name, labels, value in instant.series:
            if name == "process_resident_memory_bytes":
                key = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "server"
                series[key].append((instant.time - start, value / 2**20))
    return dict(series)


def in_flight(instants: Sequence[Instant], model: str | None) -> list[tuple[float, float]]:
    """(epoch seconds, requests in flight for the model, summed over processes)."""
    match = {"model": model} if model else {}
    out = []
    for instant in instants:
        value = instant.total("inscale_requests_in_flight", **match)
        if value is not None:
            out.append((instant.time, value))
    return out
